"""How every crosstune command and stage script ends: logging set up, and a user's mistake turned into one
clear line and exit status 2 instead of a traceback (``CROSSTUNE_DEBUG=1`` shows the traceback).

A module of its own, so the stage scripts depend on this and not on the command line's module: editing a
`crosstune tune` help string reruns no stage.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Sequence

from crosstune.errors import CrosstuneError
from crosstune.logging_setup import configure_logging

USER_ERRORS = (CrosstuneError, ValueError, KeyError, FileNotFoundError)


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` with logging configured, turning user errors into a one-line message and exit 2."""
    configure_logging()
    try:
        main(argv)
    except USER_ERRORS as error:
        if os.environ.get("CROSSTUNE_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"crosstune: error: {message}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk in a write that is not crosstune's own (dvclive's logs, a library's)
        if error.errno != errno.ENOSPC or os.environ.get("CROSSTUNE_DEBUG"):
            raise
        print(f"crosstune: error: {error.filename or 'a file'}: no space left on the device while writing it; free "
              f"some space (dvc gc -w, dvc exp remove) and rerun.", file=sys.stderr)
        return 2
    return 0
