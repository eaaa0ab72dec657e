"""Run a stage script with a training callback that SIGKILLs its process right after optimizer step N: the crash
the resume tests recover from. The stage's own code is untouched; the callback rides on
:func:`crosstune.training.loop.train`'s ``callbacks``.

    python tests/helpers/kill_at_step.py N stages/finetune.py ARGS...

or, where a command line cannot be changed (a `dvc repro`), put tests/helpers/python_shim first on PATH with
``CROSSTUNE_TEST_KILL_AT_STEP=N``: its ``python`` runs ``stages/finetune.py`` through this script.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

from crosstune.training import loop
from crosstune.training.callbacks import TrainingCallback


class KillAtStep(TrainingCallback):
    """SIGKILL this process after optimizer step ``step``: no cleanup, no atexit, as a crash or OOM kill."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    step, script, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    real_train = loop.train

    def train(*positional, callbacks=(), **keywords):  # the stage imports `train` when it runs: this one
        return real_train(*positional, callbacks=[*callbacks, KillAtStep(step)], **keywords)

    loop.train = train
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
