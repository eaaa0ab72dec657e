"""How deep to freeze, measured: fine-tune every task at each freeze depth, 3 seeds, beside the per-block
transferability that ``freeze.depth: auto`` reads.

Per task the data is prepared and encoded once (split of base.seed 42) through the pipeline's own stage functions;
the backbone stage writes ``block_scores.json`` (the backbone's transferability after its stem and after each
block, on the same seeded sample the selection scores use). Then per seed and depth: attach-head with that
``freeze.depth``, cache, finetune and evaluate (``evaluate.guard: off``: the guard's models are not what is
compared), recording the test and validation metrics and the seconds. Where every block is frozen the probe stage
runs too: ``finetune.head_init: auto`` (the default) starts the head from the probe's closed-form fit there. Writes bench/freeze/results.json after
every run (a rerun skips what is there); ``table.py`` prints the tables and scores the ``auto`` rule.

Tasks (bench/tasks.py): ``text`` (MiniLM-L6, 6 blocks), ``fashion`` (EfficientNet-Lite0, 17 blocks: a grid),
``speech`` (Whisper tiny.en's encoder, 4 blocks) and ``speakers`` (GE2E, 4 blocks), on which the rule's two
constants were chosen; ``topic`` (MiniLM-L6 on the reviews' conditions) and ``digits`` (Lite0 at 64 px) are held out:
swept after the constants were fixed, to see whether the rule carries over.

    .venv/bin/python bench/freeze/run.py [--tasks text,speech] [--seeds 42,1,2] [--depths fashion=0,8,17]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import tasks  # noqa: E402  (bench/tasks.py: the benchmarks' shared tasks)
from workdir import merge, prepare_workdir, record_run  # noqa: E402  (bench/workdir.py; also puts src/ on the path)

SWEEP = ("text", "fashion", "speech", "speakers", "topic", "digits")
DEPTHS = {"text": [0, 1, 2, 3, 4, 5, 6, "all"], "fashion": [0, 2, 4, 7, 8, 12, 13, 16, 17, "all"],
          "speech": [0, 1, 2, 3, 4, "all"], "speakers": [0, 1, 2, 3, 4, "all"], "topic": [0, 1, 2, 3, 4, 5, 6],
          "digits": [0, 2, 4, 6, 8, 10, 12, 14, 16, 17]}
QUIET = {"evaluate": {"guard": "off", "baselines": ["majority"]}}


def run_depth(work: Path, params: dict, seed: int, depth: int | str) -> dict:
    """attach-head (``depth``), cache, finetune and evaluate on the prepared ``work``; test and validation scores."""
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.probe import probe_stage

    run = work / f"seed-{seed}" / f"depth-{depth}"
    run.mkdir(parents=True, exist_ok=True)
    path = run / "params.yaml"
    path.write_text(yaml.safe_dump(merge(params, {"base": {"seed": seed}, "freeze": {"depth": depth}})))
    started = time.perf_counter()
    freeze = attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(run / "initial"),
                               str(run / "freeze.json"), str(path))
    cache_stage(str(run / "initial"), str(work / "encoded"), str(run / "features"), str(path))
    probe = None
    if depth == "all" or depth >= freeze["num_blocks"]:  # finetune.head_init: auto starts from the probe's head
        probe = str(run / "probe")
        probe_stage(str(run / "initial"), str(work / "encoded"), probe, str(run / "probe.json"), str(path),
                    str(run / "features"))
    fine = finetune_stage(str(run / "initial"), str(work / "encoded"), str(run / "model"), str(run / "live"),
                          str(path), str(run / "features"), probe_dir=probe)
    metrics = evaluate_stage(str(run / "model"), str(work / "encoded"), str(work / "prepared"),
                             str(run / "eval.json"), str(run / "predictions.csv"), str(run / "misclassified.png"),
                             str(path))
    seconds = time.perf_counter() - started
    return {"seed": seed, "depth": depth, "f1_macro": metrics["f1_macro"], "accuracy": metrics["accuracy"],
            "validation_f1_macro": fine.get("f1_macro"), "best_epoch": fine.get("best_epoch"),
            "trainable_parameters": freeze["trainable_parameters"], "seconds": round(seconds, 1)}


def run(names: list[str], seeds: list[int], depths: dict[str, list], out: Path) -> None:
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    results = json.loads(out.read_text()) if out.exists() else {}
    works = {}
    for seed in seeds:
        for task in names:
            entry = results.setdefault(task, {"runs": []})
            if task not in works:
                works[task] = Path(tempfile.mkdtemp(prefix=f"freeze-{task}-"))
                params = merge(tasks.task_params(task, works[task]), QUIET)
                prepare_workdir(works[task], params, attach=False)
                works[task] = (works[task], params)
                entry["params"] = tasks.TASKS[task] or "params.yaml"
                entry["backbone"] = params["backbone"]["name"]
                entry["block_scores"] = json.loads((works[task][0] / "backbone" / "block_scores.json").read_text())
                out.write_text(json.dumps(results, indent=1) + "\n")
            work, params = works[task]
            done = {(run["seed"], str(run["depth"])) for run in entry["runs"]}
            for depth in depths[task]:
                if (seed, str(depth)) in done:
                    continue
                record_run(results, out, task, entry["runs"], run_depth(work, params, seed, depth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(SWEEP))
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--depths", action="append", default=[], metavar="TASK=D1,D2",
                        help="depths to sweep for a task (default: bench/freeze/run.py's DEPTHS)")
    parser.add_argument("--out", default=str(REPO / "bench/freeze/results.json"))
    args = parser.parse_args()
    depths = dict(DEPTHS)
    for item in args.depths:
        task, _, values = item.partition("=")
        depths[task] = [value if value == "all" else int(value) for value in values.split(",")]
    run(args.tasks.split(","), [int(seed) for seed in args.seeds.split(",")], depths, Path(args.out))


if __name__ == "__main__":
    main()
