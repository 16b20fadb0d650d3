"""A small hierarchy of exceptions that carry a message a user can act on.

Every error raised on purpose by kws derives from :class:`KWSError`. Each class
has a stable machine-readable ``code`` and, for the HTTP service, a ``status``.
Command-line entry points print ``str(err)`` and exit non-zero; the service
answers ``{"error": {"code": ..., "message": ...}}`` with ``status``.
"""

from __future__ import annotations


class KWSError(Exception):
    """Base class: something the user can fix, described in plain words."""

    code = "kws_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


# --- configuration and data -------------------------------------------------
class ConfigError(KWSError):
    code = "config_error"


class DownloadError(KWSError):
    """The dataset could not be fetched (network, HTTP status, truncated body)."""

    code = "download_failed"


class ChecksumError(DownloadError):
    code = "checksum_mismatch"


class UnsafeArchiveError(DownloadError):
    """The archive tries to write outside the target tree (``..``, absolute paths, links)."""

    code = "unsafe_archive"


class DatasetError(KWSError):
    """The dataset on disk is empty, malformed or unusable."""

    code = "dataset_error"


class NotComparableError(KWSError):
    """Two models cannot be scored on the same test set (e.g. they predict different labels)."""

    code = "not_comparable"


# --- model bundle -----------------------------------------------------------
class ModelNotFoundError(KWSError):
    code = "model_not_found"
    status = 503


class BundleError(KWSError):
    """A model bundle exists but is incomplete or inconsistent."""

    code = "bad_bundle"
    status = 503


# --- audio input (mapped to HTTP statuses by the service) -------------------
class AudioError(KWSError):
    code = "bad_audio"
    status = 422


class UnsupportedAudioError(AudioError):
    """The bytes are not audio in any format we can decode."""

    code = "unsupported_media_type"
    status = 415


class EmptyAudioError(AudioError):
    code = "empty_audio"
    status = 422


class SilentAudioError(AudioError):
    code = "silent_audio"
    status = 422


class InvalidAudioError(AudioError):
    """Decoded, but the samples are unusable (NaN/Inf)."""

    code = "invalid_audio"
    status = 422


class AudioTooLongError(AudioError):
    code = "audio_too_long"
    status = 422


class AudioTooLargeError(AudioError):
    """Channels x frames past the decode budget: a small upload that would expand to far more samples
    (memory, resampling CPU) than its size suggests."""

    code = "audio_too_large"
    status = 413


class DecoderBusyError(KWSError):
    """Every ffmpeg decode slot stayed taken for the whole wait: retry in ``retry_after_s`` seconds."""

    code = "busy"
    status = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = int(retry_after_s)


class StorageUnavailableError(KWSError):
    """The server could not stage or decode an upload for an operating-system reason (memory,
    disk, file descriptors, processes): the upload may be fine, retrying later may work."""

    code = "storage_unavailable"
    status = 503
