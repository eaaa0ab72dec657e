"""Exceptions a user can act on: each message names the file, key or row and the fix."""

from __future__ import annotations


class CrosstuneError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(CrosstuneError, ValueError):
    """A bad key or value in ``params.yaml``."""


class DataError(CrosstuneError, ValueError):
    """A bad data file: missing column, empty text, unknown label, too few examples..."""


class BackboneUnavailableError(CrosstuneError, OSError):
    """A backbone that cannot be loaded here (not installed, not local, no hub)."""


class ArtifactError(CrosstuneError, OSError):
    """A pipeline output that is missing, truncated or corrupt: restore it (dvc checkout) or rebuild it."""
