"""The set-up every benchmark shares: a params file and the pipeline's first stages in a scratch directory.

Runs prepare and backbone (and attach-head unless told not to) through the library's stage functions,
so a benchmark measures what `dvc repro` does, from the split to the attached model.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))


def merge(base: dict, extra: dict) -> dict:
    """``base`` params with ``extra``'s sections laid over them key by key (deep copies, inputs untouched)."""
    out = copy.deepcopy(base)
    for section, values in extra.items():
        if isinstance(values, dict):
            out.setdefault(section, {}).update(copy.deepcopy(values))
        else:
            out[section] = values
    return out


def default_params(example: str | None = None) -> dict:
    """params.yaml, with ``example`` (a file under examples/) laid over it, its data paths made absolute:
    what a benchmark starts from, wherever its scratch directory is."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if example:
        params = merge(params, yaml.safe_load((REPO / example).read_text()))
    for key in ("train", "test", "source"):
        if params["data"].get(key):
            params["data"][key] = str(REPO / params["data"][key])
    return params


def record_run(results: dict, out: Path, task: str, runs: list, run: dict) -> None:
    """Append ``run`` to ``runs`` (a list inside ``results``), rewrite ``out`` whole and print the run: a
    benchmark stopped part-way keeps every run it finished, and a rerun skips them."""
    import json

    runs.append(run)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(task, json.dumps(run), flush=True)


def prepare_workdir(work: Path, params: dict, attach: bool = True) -> Path:
    """Write ``params`` to ``work/params.yaml``, run the first stages into ``work``; returns the params path.

    Outputs: ``prepared/``, ``backbone/``, ``encoded/`` and (with ``attach``) ``initial/``.
    """
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    prepare_stage(params["data"]["train"], params["data"]["test"], str(work / "prepared"), str(path),
                  params["data"].get("source"))
    backbone_stage(str(work / "prepared"), str(work / "backbone"), str(work / "encoded"), str(work / "backbone.json"),
                   str(work / "selection.json"), str(work / "selection.csv"), str(path))
    if attach:
        attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(work / "initial"),
                          str(work / "freeze.json"), str(path))
    return path


def run_seed(work: Path, run_dir: Path, run_params: dict, attached_to_evaluate: bool = False) -> tuple[dict, float]:
    """attach-head, cache, probe, finetune and evaluate with ``run_params`` into ``run_dir``, on the prepared and
    encoded data of ``work`` (:func:`prepare_workdir` with ``attach=False``); returns the test metrics and
    the seconds the four stages took. ``attached_to_evaluate`` gives evaluate the attached model, as
    dvc.yaml does: the negative-transfer guard (when ``evaluate.guard`` is on) and the domain gap."""
    import time

    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.probe import probe_stage
    from crosstune.pipeline.scratch import scratch_stage

    path = run_dir / "params.yaml"
    run_dir.mkdir(parents=True)
    path.write_text(yaml.safe_dump(run_params))
    started = time.perf_counter()
    attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(run_dir / "initial"),
                      str(run_dir / "freeze.json"), str(path))
    cache_stage(str(run_dir / "initial"), str(work / "encoded"), str(run_dir / "features"), str(path))
    probe_stage(str(run_dir / "initial"), str(work / "encoded"), str(run_dir / "probe"), str(run_dir / "probe.json"),
                str(path), str(run_dir / "features"))
    finetune_stage(str(run_dir / "initial"), str(work / "encoded"), str(run_dir / "model"), str(run_dir / "live"),
                   str(path), str(run_dir / "features"), probe_dir=str(run_dir / "probe"))
    if attached_to_evaluate:  # the guard's scratch model (its stage records "off" when the guard is off)
        scratch_stage(str(run_dir / "initial"), str(work / "encoded"), str(run_dir / "scratch"), str(path))
    metrics = evaluate_stage(str(run_dir / "model"), str(work / "encoded"), str(work / "prepared"),
                             str(run_dir / "eval.json"), str(run_dir / "predictions.csv"),
                             str(run_dir / "misclassified.png"), str(path),
                             str(run_dir / "initial") if attached_to_evaluate else None,
                             str(run_dir / "scratch") if attached_to_evaluate else None,
                             str(run_dir / "probe"))
    return metrics, time.perf_counter() - started
