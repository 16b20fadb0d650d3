"""Label vocabulary of Speech Commands v0.02 and the tasks built on it."""

from __future__ import annotations

SILENCE = "_silence_"
UNKNOWN = "_unknown_"
BACKGROUND_NOISE_DIR = "_background_noise_"

#: The ten command words of the standard 12-class task.
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

#: All 35 words of Speech Commands v0.02.
ALL_WORDS = KEYWORDS + (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "backward", "forward", "follow", "learn", "visual",
)


def task_labels(task: str) -> list[str]:
    """Ordered class names for a task: ``keywords`` (12 classes) or ``all_words`` (35 + silence)."""
    if task == "keywords":
        return [SILENCE, UNKNOWN, *KEYWORDS]
    if task == "all_words":
        return [SILENCE, *ALL_WORDS]
    from kws.errors import ConfigError

    raise ConfigError(f"unknown task {task!r}: use 'keywords' (12 classes) or 'all_words' (35 words + silence)")
