"""Which settings give byte-identical metrics across the CPUs this project meets: the text default's whole
`dvc repro`, cell by cell, from a fresh clone each.

A cell is a precision (``finetune.mixed_precision``: ``off`` = float32, ``bf16``), ``base.deterministic``,
``base.num_threads`` and an instruction set. One machine stands in for the others by capping what its math
libraries may use, the three that pick kernels by CPU: PyTorch's own vectorised kernels
(``ATEN_CPU_CAPABILITY``), oneDNN (``ONEDNN_MAX_CPU_ISA``) and MKL (``MKL_ENABLE_INSTRUCTIONS``):

- ``native``: everything this CPU has (on the AMD EPYC: AVX-512 with avx512_bf16, no AMX);
- ``avx512``: AVX-512 without bf16 instructions (an Intel Skylake / Cascade Lake server);
- ``avx2``: AVX2 only (a CPU with neither AVX-512 nor bf16: most laptops, older servers).

A cap can take kernels away, never add them: AMX cannot be emulated here, so the Intel Xeon with AMX is the
committed run (``git show HEAD:metrics/eval.json`` of the commit measured), made on that machine with the
bf16 default of that time. Each clone runs with its own ``src`` first on ``PYTHONPATH`` (the checkout's
virtual environment otherwise imports the checkout's code) and its own DVC cache (no run-cache across cells).
Every cell records the SHA-256 of every metrics file, the md5 ``dvc.lock`` records for every output, the
test macro-F1 and the wall time; ``table.py`` compares the cells file by file.

    .venv/bin/python bench/reproducibility/run.py [--cells NAME,...] [--revision REV] [--out results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("results_epyc.json")
ISAS = {  # the caps on PyTorch's, oneDNN's and MKL's kernel choice
    "native": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
CELLS = {  # name: (mixed_precision, deterministic, num_threads, isa)
    "float32": ("off", False, 0, "native"),
    "float32-deterministic": ("off", True, 0, "native"),
    "float32-1-thread": ("off", False, 1, "native"),
    "float32-avx512": ("off", False, 0, "avx512"),
    "float32-avx2": ("off", False, 0, "avx2"),
    "bf16": ("bf16", False, 0, "native"),
    "bf16-deterministic": ("bf16", True, 0, "native"),
    "bf16-avx512": ("bf16", False, 0, "avx512"),
    "bf16-avx2": ("bf16", False, 0, "avx2"),
}
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprints(clone: Path) -> dict[str, str]:
    """SHA-256 (16 hex digits) of every metrics file, and the md5 dvc.lock records for every output."""
    found = {path.relative_to(clone).as_posix(): sha256(path)[:16]
             for path in sorted((clone / "metrics").rglob("*")) if path.is_file()}
    stages = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    found.update({f"dvc.lock:{out['path']}": out["md5"][:16] for stage in stages.values() for out in stage["outs"]})
    return found


def run_cell(name: str, revision: str, work: Path, timeout: float) -> dict:
    """Clone ``revision``, set the cell's params, run `dvc repro` under its caps; hashes, metrics, seconds."""
    precision, deterministic, threads, isa = CELLS[name]
    clone = work / name
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", revision], cwd=clone, check=True)
    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["finetune"]["mixed_precision"] = precision
    params["base"]["deterministic"] = deterministic
    params["base"]["num_threads"] = threads
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **ISAS[isa], "PYTHONPATH": str(clone / "src"),
           "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    started = time.perf_counter()
    done = subprocess.run([str(REPO / ".venv" / "bin" / "dvc"), "repro"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        return {"cell": name, "error": (done.stdout + done.stderr)[-2000:], "seconds": round(seconds, 1)}
    metrics = json.loads((clone / "metrics" / "eval.json").read_text())
    finetune = json.loads((clone / "metrics" / "finetune" / "metrics.json").read_text())
    return {"cell": name, "precision": precision, "deterministic": deterministic, "threads": threads or "all",
            "isa": isa, "ran_in": finetune.get("precision"), "f1_macro": metrics["f1_macro"],
            "accuracy": metrics["accuracy"], "seconds": round(seconds, 1),
            "files": fingerprints(clone)}


def committed_run(revision: str) -> dict:
    """The committed metrics of ``revision``: the Intel Xeon with AMX run (bf16 then), hashed as the cells are."""
    text = subprocess.run(["git", "show", f"{revision}:metrics/eval.json"], cwd=REPO, capture_output=True,
                          check=True).stdout
    metrics = json.loads(text)
    return {"cell": "committed (Intel Xeon with AMX, bf16)", "f1_macro": metrics["f1_macro"],
            "accuracy": metrics["accuracy"], "files": {"metrics/eval.json": hashlib.sha256(text).hexdigest()[:16]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells (default: all)")
    parser.add_argument("--revision", default="HEAD", help="the commit to clone (default: HEAD)")
    parser.add_argument("--committed", default="HEAD", help="the commit whose metrics the Xeon made")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    revision = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"cells": {}}
    results.update({"revision": revision, "machine": platform.processor() or platform.machine(),
                    "cpu": _cpu_model(), "committed": committed_run(args.committed)})
    with tempfile.TemporaryDirectory(prefix="crosstune-repro-") as work:
        for name in args.cells.split(","):
            print(f"{name} ...", flush=True)
            results["cells"][name] = run_cell(name, revision, Path(work), args.timeout)
            print(json.dumps(results["cells"][name]), flush=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            flags = next(row for row in Path("/proc/cpuinfo").read_text().splitlines() if row.startswith("flags"))
            extras = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags.split()]
            return f"{line.partition(':')[2].strip()} ({', '.join(extras) or 'no bf16 instructions'})"
    return platform.processor()


if __name__ == "__main__":
    main()
