"""Run a stage script and SIGKILL it in the middle of writing its outputs: inside its N-th atomic write
(:mod:`crosstune.io`), when that output is whole in its temporary sibling but not yet moved into place, and
every earlier output of the stage is written. The kill -9 tests resume from there.

    python tests/helpers/kill_mid_write.py N stages/STAGE.py ARGS...

A stage that makes fewer than N writes exits with status 97 instead, so a test knows its kill never happened.
Used through tests/helpers/python_shim (``CROSSTUNE_TEST_KILL_STAGE``, ``CROSSTUNE_TEST_KILL_WRITE``) under
`dvc repro`.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import sys

import crosstune.io as io

NEVER_KILLED = 97


def main() -> None:
    kill_at, script, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    state = {"depth": 0, "writes": 0}

    def killing(original):
        @contextlib.contextmanager
        def wrapped(target):
            state["depth"] += 1
            top = state["depth"] == 1
            try:
                with original(target) as temporary:
                    yield temporary
                    if top:
                        state["writes"] += 1
                        if state["writes"] == kill_at:  # the output is whole beside its place, not moved in
                            os.kill(os.getpid(), signal.SIGKILL)
            finally:
                state["depth"] -= 1

        return wrapped

    io.atomic_path = killing(io.atomic_path)
    io.atomic_directory = killing(io.atomic_directory)
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as finished:
        if finished.code:
            raise  # the stage failed on its own: its status, not ours
    sys.exit(NEVER_KILLED)  # the stage finished: the kill point was never reached


if __name__ == "__main__":
    main()
