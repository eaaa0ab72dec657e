"""Logging for stage scripts and the CLI; the library itself only uses ``logging.getLogger``."""

from __future__ import annotations

import logging
import os
import sys


def configure_logging(level: str | None = None) -> None:
    """Log to stderr with timestamps; ``CROSSTUNE_LOG_LEVEL`` overrides the level."""
    logging.basicConfig(
        level=(level or os.environ.get("CROSSTUNE_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("urllib3", "filelock", "fsspec", "matplotlib", "dvc_studio_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
