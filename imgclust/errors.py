"""The one exception family of imgclust.

Every error the library raises on purpose is an :class:`ImgclustError`. The CLI maps it to a
one-line message, an optional hint and an exit code in one place (``imgclust.cli._output``):

* exit 1 -- a runtime failure (weights unavailable, cache locked, disk full, ...);
* exit 2 -- a usage error: something the user passed is wrong (a path, an option, a parameter).
"""

from __future__ import annotations


class ImgclustError(Exception):
    """Base class: a failure with a one-line message and an optional hint on what to do."""

    exit_code = 1
    code = "error"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class UsageError(ImgclustError, ValueError):
    """Something the caller passed is wrong: an option, a parameter, a path, a name."""

    exit_code = 2
    code = "usage"


class ParameterError(UsageError):
    """A parameter value outside its documented constraints."""

    code = "parameter"


class NotFoundError(UsageError, LookupError):
    """A named thing (encoder, method, run, path) does not exist."""

    code = "not_found"


class CacheError(ImgclustError):
    """The cache file is unusable: not an imgclust cache, wrong schema, damaged."""

    code = "cache"


class CacheLockedError(CacheError):
    """Another process is writing the same cache."""

    code = "cache_locked"


class WeightsUnavailableError(ImgclustError):
    """An encoder's weights could not be found locally or fetched."""

    code = "weights_unavailable"


class ResourceError(ImgclustError):
    """The job would not fit: memory, disk or size limits."""

    code = "resource"
