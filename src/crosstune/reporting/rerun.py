"""After `make repro`: did the run reproduce the committed results, and if not, what moved and by how much?

A teammate who reruns the pipeline on another machine otherwise finds only a dirty `git status`. This reads
what changed against a revision (``git status``, ``dvc metrics diff``), weighs each moved test metric against
the seed spread the project measured for it, and says what differs in how the run was made (the training
precision, which ``finetune.mixed_precision`` decides per machine when set to bf16 or auto on a GPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from crosstune.pipeline import metrics_files

# Standard deviation over 3 seeds of the text default's test metrics, float32 (bench/recipes/README.md): what a
# change of seed alone moves them by, the yardstick for "within noise".
SEED_SPREAD = {"f1_macro": 0.022}
TRACKED = ("dvc.lock", "metrics")  # what a reproduced run leaves byte-identical


def _run(command: list[str], repo: Path) -> str:
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def changed_files(repo: Path) -> list[str]:
    """The committed outputs a rerun rewrote (``dvc.lock`` and the metrics), as ``git status`` lists them."""
    status = _run(["git", "status", "--porcelain", "--untracked-files=no", "--", *TRACKED], repo)
    return [line[3:] for line in status.splitlines() if line.strip()]


def _committed(repo: Path, revision: str, path: str) -> dict[str, Any]:
    text = _run(["git", "show", f"{revision}:{path}"], repo)
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def rerun_summary(repo: str | Path = ".", revision: str = "HEAD", shown: int = 6) -> str:
    """Sentences saying whether the workspace's run reproduced ``revision``'s committed results, and if not,
    which test metrics moved, by how much against the measured seed spread, and what else differed."""
    from crosstune.reporting.wording import metric_words

    repo = Path(repo)
    changed = changed_files(repo)
    if not changed:
        return (f"Reproduced: dvc.lock and every metrics file equal the committed ones at {revision}, byte for "
                f"byte.")
    moved = json.loads(_run([sys.executable, "-m", "dvc", "metrics", "diff", revision, "--json", "--targets",
                             metrics_files.TEST], repo) or "{}")
    test = {name: entry for name, entry in moved.get(metrics_files.TEST, {}).items()
            if isinstance(entry.get("diff"), (int, float)) and entry["diff"]}
    lines = [f"The rerun differs from the committed results at {revision} ({len(changed)} files: "
             f"{', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})."]
    for name in sorted(test, key=lambda key: (key not in SEED_SPREAD, key))[:shown]:
        entry = test[name]
        spread = SEED_SPREAD.get(name)
        verdict = ""
        if spread is not None:
            within = abs(entry["diff"]) <= spread
            verdict = (f"; {'within' if within else 'beyond'} the seed spread of {metric_words(name)} "
                       f"(std {spread} over 3 seeds)")
        split = "" if "validation" in name else "test "  # eval.json also holds the guard's validation scores
        lines.append(f"  {split}{metric_words(name)} {entry['old']:.4f} -> {entry['new']:.4f} "
                     f"({entry['diff']:+.4f}){verdict}")
    if len(test) > shown:
        lines.append(f"  and {len(test) - shown} more test metrics "
                     f"(dvc metrics diff {revision} --targets {metrics_files.TEST})")
    before = _committed(repo, revision, metrics_files.TRAINING).get("precision")
    now_path = repo / metrics_files.TRAINING
    now = json.loads(now_path.read_text(encoding="utf-8")).get("precision") if now_path.is_file() else None
    if before and now and before != now:
        lines.append(f"Fine-tuning ran in {now} here and in {before} in the committed run: "
                     f"finetune.mixed_precision chose differently on this machine; set it to off on both to compare "
                     f"byte for byte.")
    else:
        lines.append("Same params and precision: the committed run was made on a CPU whose kernels round "
                     "differently (README, Reproducibility, says what holds across machines).")
    lines.append(f"Keep the committed results with `git checkout -- {' '.join(TRACKED)}` (and `dvc checkout`), "
                 f"or commit these.")
    return "\n".join(lines)
