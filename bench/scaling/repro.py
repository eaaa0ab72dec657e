"""Whole `dvc repro` wall time of the text default at each training-set size, stage by stage.

What a user waits for, not one stage: for each ``text_augment.copies`` the repository's committed HEAD is
cloned into a temporary directory, ``params.yaml`` gets the copies (509 training reviews x (1 + copies)
training examples; validation and test stay real), and ``dvc repro`` runs there from nothing, with this
checkout's virtual environment on ``PATH``, offline. Each stage's seconds are taken from the moment DVC
prints ``Running stage`` to the next; the test metric, the kept epoch and the training precision are read
from the clone's metrics, and ``git status --porcelain`` after the run (at the committed copies, 0, the
clone is untouched: empty means the fresh clone reproduced the committed metrics and dvc.lock).

    .venv/bin/python bench/scaling/repro.py [--copies 0,3,15]     # writes bench/scaling/repro.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("repro.json")
STAGE_LINE = re.compile(r"Running stage '([^']+)'")
TRAIN_REVIEWS = 509


def repro(copies: int, work: Path) -> dict:
    """Clone HEAD, set the copies, run ``dvc repro``; seconds in all and per stage, and the results."""
    clone = work / f"copies-{copies}"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    if params["text_augment"]["copies"] != copies:  # else the clone stays as committed: a fresh-clone check too
        params["text_augment"]["copies"] = copies
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    stages: dict[str, float] = {}
    current, mark = None, time.perf_counter()
    started = mark
    process = subprocess.Popen([str(REPO / ".venv" / "bin" / "dvc"), "repro"], cwd=clone, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    assert process.stdout is not None
    for line in process.stdout:
        found = STAGE_LINE.search(line)
        if found:
            now = time.perf_counter()
            if current is not None:
                stages[current] = round(now - mark, 1)
            current, mark = found.group(1), now
            print(f"  copies {copies}: {current} ...", flush=True)
    if process.wait() != 0:
        raise SystemExit(f"dvc repro failed in {clone} (copies {copies}); rerun it there to see why")
    total = time.perf_counter() - started
    if current is not None:
        stages[current] = round(time.perf_counter() - mark, 1)
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=clone, text=True, capture_output=True,
                             check=True).stdout.splitlines()
    evaluation = json.loads((clone / "metrics" / "eval.json").read_text())
    finetune = json.loads((clone / "metrics" / "finetune" / "metrics.json").read_text())
    return {"copies": copies, "training_examples": TRAIN_REVIEWS * (1 + copies), "repro_seconds": round(total, 1),
            "stage_seconds": stages, "test_f1_macro": evaluation.get("f1_macro"),
            "scratch_model": evaluation.get("scratch_model"), "best_epoch": finetune.get("best_epoch"),
            "epochs_run": finetune.get("epochs_run"), "precision": finetune.get("precision"),
            "git_status_after": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", default="0,3,15")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True, capture_output=True,
                          check=True).stdout.strip()
    out = {"command": "python bench/scaling/repro.py " + " ".join(sys.argv[1:]), "commit": head,
           "machine": f"{len(os.sched_getaffinity(0))} CPU cores", "runs": []}
    with tempfile.TemporaryDirectory(prefix="crosstune-repro-") as work:
        for copies in (int(value) for value in args.copies.split(",")):
            out["runs"].append(repro(copies, Path(work)))
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
            print(json.dumps(out["runs"][-1]), flush=True)


if __name__ == "__main__":
    main()
