"""kws: keyword spotting on Speech Commands, from download to a served model."""

__version__ = "0.1.0"
