"""The set-up every benchmark shares: a params file and the pipeline's first stages in a scratch directory, and
the harness of the benchmarks that race contestants (crosstune against a peer's recipe), each in its own process.

Runs prepare and backbone (and attach-head unless told not to) through the library's stage functions,
so a benchmark measures what `dvc repro` does, from the split to the attached model. Every contestant's run
records the CPU it ran on (:func:`machine`), and a rerun on another CPU class runs it again (:func:`done_runs`).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable

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


def machine() -> dict:
    """The CPU a figure came from: sessions land on different CPUs (an EPYC with or without AVX-512, a Xeon with
    AMX) that all call themselves the same model name, so the instruction sets that change the kernels are named."""
    import os
    import platform

    name, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name") and name == platform.processor():
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    extensions = sorted(flag for flag in flags if flag in ("avx512f", "avx512_bf16") or flag.startswith("amx"))
    return {"model_name": name, "cores": len(os.sched_getaffinity(0)),
            "extensions": extensions or ["no AVX-512"], "cpu": platform.processor() or platform.machine()}


def contestant_arguments(parser: "argparse.ArgumentParser", tools: tuple[str, ...], out: str) -> None:
    """The command line every contestant benchmark shares: the seeds and tools to run, the results file, and the
    hidden arguments with which the script runs one contestant in its own process (:func:`run_contestant`)."""
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--tools", default=",".join(tools))
    parser.add_argument("--out", default=out)
    parser.add_argument("--worker", choices=tools, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def measure_contestant(run: "Callable[[], dict]", out: Path) -> None:
    """In the contestant's own process: ``run()`` on every core, its result with the total seconds and the peak
    memory written to ``out``."""
    import json
    import os
    import resource
    import time

    import torch

    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    started = time.perf_counter()
    result = run()
    result["total_seconds"] = time.perf_counter() - started
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result, indent=1))


def run_contestant(script: str, tool: str, workdir: Path, params_path: Path, seed: int) -> dict:
    """Run ``script --worker tool`` (its :func:`measure_contestant`) in a fresh process, so no contestant inherits
    another's warm caches or memory; returns its result with the machine it ran on."""
    import json
    import subprocess

    result = workdir / f"{tool}.json"
    subprocess.run([sys.executable, script, "--worker", tool, "--workdir", str(workdir), "--params", str(params_path),
                    "--seed", str(seed), "--result", str(result)], check=True)
    return {**json.loads(result.read_text()), "machine": machine()}


def load_results(out: Path) -> dict:
    """A benchmark's results file, or an empty one: runs are appended (:func:`record_run`), so a rerun skips what
    is done."""
    import json

    return json.loads(out.read_text()) if out.is_file() else {"runs": []}


def done_runs(results: dict, keys: tuple[str, ...]) -> set[tuple]:
    """The ``keys`` of the runs already measured on this CPU class (:func:`machine`): a rerun skips them, and runs
    again what another CPU measured, so no table mixes CPUs unawares. A run without its machine (recorded before
    runs carried one) counts as measured here."""
    here = machine()
    return {tuple(run[key] for key in keys) for run in results["runs"] if run.get("machine", here) == here}


def machines_line(results: dict) -> str:
    """Which CPUs a results file's runs came from, for the head of its table."""
    seen = {machine_words(run.get("machine") or results.get("machine") or {}) for run in results["runs"]}
    return "; ".join(sorted(seen))


def machine_words(machine_record: dict) -> str:
    """"AMD EPYC (avx512_bf16, avx512f), 2 cores": a run's CPU in the words a table names it by."""
    extensions = machine_record.get("extensions")
    return (f"{machine_record.get('model_name', 'unknown CPU')}" + (f" ({', '.join(extensions)})" if extensions else "")
            + f", {machine_record.get('cores', '?')} cores")
