"""The byte progress bar of downloads, copies and extraction."""

from __future__ import annotations

from tqdm import tqdm


def byte_bar(name: str, total: int | None, initial: int = 0, enabled: bool = True) -> tqdm:
    """A tqdm bar counting bytes (KiB/MiB units); ``enabled`` False draws nothing."""
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not enabled,
        mininterval=0.5,
    )
