"""``crosstune export``: the fine-tuned model directory plus a model card, ready to hand over.

The exported directory is the finetune stage's directory (``config.json``, ``model.safetensors``,
tokenizer, ``params.json``) with a ``README.md`` model card that records the backbone, the data,
the params, the test metrics, the git revision and the DVC hash of the model. Load it with
``crosstune.load(DIR)``. ``--format onnx`` adds ``model.onnx`` for ONNX Runtime
(:mod:`crosstune.inference.onnx_export`; run it with ``crosstune predict --onnx``).

Export is a command run when handing a model over, not a pipeline stage: the card names the git
revision, and a stage output that changed with every commit would never be up to date.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from crosstune.pipeline import metrics_files

CARD_NAME = "README.md"


def git_revision(directory: Path) -> str:
    """``abc1234`` or ``abc1234 (+ uncommitted changes)``; ``unknown`` outside git."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    revision = git("rev-parse", "--short", "HEAD")
    if not revision:
        return "unknown (not a git checkout with commits)"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "params.yaml", "dvc.yaml", "src", "stages")
    return f"{revision} (+ uncommitted changes to params or code)" if dirty else revision


def dvc_locked_hash(repo_dir: Path, output: str) -> str:
    """The md5 that ``dvc.lock`` records for ``output`` (e.g. ``models/finetuned``), or ``unknown``."""
    import yaml

    lock = repo_dir / "dvc.lock"
    if not lock.is_file():
        return "unknown (no dvc.lock)"
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == output:
                return str(out.get("md5", "unknown"))
    return "unknown (not in dvc.lock)"


def _rows(mapping: dict[str, Any]) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    for key, value in mapping.items():
        shown = f"{value:.4f}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (list, dict)) else value
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


HOW_TRAINED = {  # how the card says each kind of model directory was made (found by :func:`trained_as`)
    "finetuned": "fine-tuned with crosstune",
    "probe": "kept frozen, its output layer fitted on the frozen features by crosstune (the linear probe, "
             "which the negative-transfer guard found best on validation)",
    "scratch": "trained by crosstune from random weights, not the pretrained ones (the negative-transfer "
               "guard found this scratch model best on validation)",
}


PER_CLASS_SCORES = ("precision", "recall", "f1", "ap", "ap_50", "count_mae", "count_bias", "support")


def trained_as(model_dir: str | Path) -> str:
    """Which kind of model a directory holds, from the record its stage leaves: the probe stage's
    ``probe.json``, the scratch stage's ``guard.json``; anything else was fine-tuned."""
    from crosstune.transfer_model.settings import GUARD_RECORD, PROBE_RECORD

    model_dir = Path(model_dir)
    if (model_dir / PROBE_RECORD).is_file():
        return "probe"
    if (model_dir / GUARD_RECORD).is_file():
        return "scratch"
    return "finetuned"


def model_card(config: dict[str, Any], params: dict[str, Any], metrics: dict[str, Any], backbone: dict[str, Any],
               data: dict[str, Any], revision: str, locked_hash: str, weights_sha256: str,
               trained: str = "finetuned") -> str:
    """The Markdown model card; ``trained`` is a key of :data:`HOW_TRAINED`."""
    from crosstune.modalities import modality_of_config
    from crosstune.tasks.registry import TASKS

    how_trained = HOW_TRAINED[trained]
    task, labels = config["task"], config["labels"]
    example = modality_of_config(config).usage
    headline = {key: value for key, value in metrics.items() if key in TASKS.get(task).card_metrics}
    baselines = {key: value for key, value in metrics.items() if key.startswith(("baseline_", "gain_"))}
    # <class or entity type>_<score> of every class that has a <class>_support count
    classes = [key[: -len("_support")] for key in metrics if key.endswith("_support")]
    per_class = {f"{name}_{score}": metrics[f"{name}_{score}"] for name in classes for score in PER_CLASS_SCORES
                 if f"{name}_{score}" in metrics}
    return f"""---
library_name: crosstune
tags: [crosstune, {task}, {backbone.get('architecture', 'unknown')}]
---
# crosstune {task} model

A `{backbone.get('name')}` backbone ({backbone.get('architecture')}, {backbone.get('num_parameters')} parameters,
{backbone.get('num_blocks')} blocks, hidden size {backbone.get('hidden_size')}) {how_trained}.
Labels (output index order): {', '.join(f'`{label}`' for label in labels) or 'a single regression value'}.

## Use

```python
import crosstune
predictor = crosstune.load("path/to/this/directory")
predictor.predict({example})  # {TASKS.get(task).prediction_shape}
```
or `crosstune predict --model path/to/this/directory --input new.csv --text-column text --output labelled.csv`.

## Test metrics

{_rows(headline)}

### Per class

{_rows(per_class) if per_class else '(none: the model predicts values)'}

### Baselines on the same split

{_rows(baselines) if baselines else '(none)'}

## Data

{_rows(data)}

## Params

{_rows({f"{section}.{key}": value for section, values in params.items() if isinstance(values, dict)
        for key, value in values.items()})}

## Provenance

- Exported at git revision {revision}; `dvc.lock` there records this model directory as md5 `{locked_hash}`,
  and pins every input (data, backbone, params) that produced it: `git checkout {revision.split()[0]} && dvc repro`
  reproduces it.
- `model.safetensors` SHA-256: `{weights_sha256}`
- Backbone source: {backbone.get('source')}
"""


EXPORTED_DIRS = {"finetuned": "models/finetuned", "probe": "models/probe", "scratch": "models/scratch"}
EXPORT_FORMATS = ("safetensors", "onnx")  # the model directory as it is, or with model.onnx added


def exported_model_dir(eval_metrics: str | Path = metrics_files.TEST) -> str:
    """The model evaluate chose to export: the fine-tuned one, or the negative-transfer guard's probe or
    scratch model when ``evaluate.guard: fallback`` found it better on validation."""
    from crosstune.io import read_json

    choice = read_json(eval_metrics).get("exported_model", "finetuned") if Path(eval_metrics).is_file() else "finetuned"
    return EXPORTED_DIRS[choice]


def _raw_training_texts(repo_dir: Path) -> list[str]:
    """The texts of the training table `data.train` names, as the user gave them (before clean-up), or none where
    it is not a readable table here: only their numeric HTML references are read."""
    from crosstune.config import PrepareParams, load_section, read_params_file
    from crosstune.data.tables import read_table
    from crosstune.errors import CrosstuneError

    try:
        params = read_params_file(repo_dir / "params.yaml")
        column = load_section(PrepareParams, repo_dir / "params.yaml").text_column
        table = read_table(repo_dir / params["data"]["train"])
        return table[column].dropna().astype(str).tolist()
    except (CrosstuneError, OSError, KeyError, TypeError):
        return []


def _normalise_in_tokenizer(directory: Path, repo_dir: Path) -> str:
    """Save crosstune's text clean-up into the exported tokenizer (:mod:`crosstune.inference.exported_tokenizer`)
    and record it in config.json, so the stock pipeline sees the tokens training saw and `crosstune predict`
    does not clean twice; returns the model card's paragraph on it."""
    from crosstune.inference.exported_tokenizer import add_crosstune_normalizer
    from crosstune.io import read_json, write_json
    from crosstune.transfer_model.settings import HF_SECTION, is_hf_form

    config = read_json(directory / "config.json")
    settings = config[HF_SECTION] if is_hf_form(config) else config
    add_crosstune_normalizer(directory / "tokenizer.json", _raw_training_texts(repo_dir),
                             bool(settings.get("lowercase")))
    settings["tokenizer_normalises"] = True
    write_json(directory / "config.json", config)
    truncation = ""
    if (directory / "tokenizer_config.json").is_file():
        tokenizer_config = read_json(directory / "tokenizer_config.json")
        # transformers builds a named class's pipeline (BertTokenizer's normalizer...) from its own code and drops
        # tokenizer.json's; the generic class loads tokenizer.json as it is, clean-up included
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if isinstance(settings.get("max_length"), int):
            # `pipeline(..., truncation=True)` cuts at model_max_length: where training and crosstune predict cut
            tokenizer_config["model_max_length"] = settings["max_length"]
            truncation = (f" Texts were cut at {settings['max_length']} tokens in training: call the pipeline with "
                          f"`truncation=True` to cut them there too.")
        write_json(directory / "tokenizer_config.json", tokenizer_config)
    return ("\n## Text clean-up\n\nThe tokenizer cleans each text as training did (HTML entities, Unicode NFKC, "
            "white space, wrapping quotes) before its own normalizer, so `transformers.pipeline` and "
            f"`crosstune predict` see the same tokens.{truncation}\n")


def export_model(model_dir: str | Path, out_dir: str | Path, eval_metrics: str | Path = metrics_files.TEST,
                 backbone_summary: str | Path = metrics_files.BACKBONE,
                 data_summary: str | Path = "data/prepared/summary.json", repo_dir: str | Path = ".",
                 format: str = "safetensors") -> Path:
    """Copy ``model_dir`` to ``out_dir`` (atomically) and add the model card; returns ``out_dir``.

    ``format="onnx"`` also traces the model into ``model.onnx`` (:mod:`crosstune.inference.onnx_export`) inside
    the same temporary directory, so a failed export leaves no half-written graph and an existing ``out_dir``
    survives until the new one is whole.
    """
    from crosstune.io import atomic_directory, file_sha256, read_json
    from crosstune.tasks.registry import TASKS
    from crosstune.transfer_model.settings import model_settings

    if format not in EXPORT_FORMATS:
        raise ValueError(f"export format {format!r}; valid: {list(EXPORT_FORMATS)}")
    model_dir, repo_dir, out_dir = Path(model_dir), Path(repo_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; run `dvc repro` first, or pass --model.")
    relative = model_dir.resolve().relative_to(repo_dir.resolve()).as_posix() \
        if model_dir.resolve().is_relative_to(repo_dir.resolve()) else str(model_dir)
    settings = model_settings(read_json(model_dir / "config.json"))
    card = model_card(
        config=settings, params=read_json(model_dir / "params.json"),
        metrics=read_json(eval_metrics), backbone=read_json(backbone_summary), data=read_json(data_summary),
        revision=git_revision(repo_dir), locked_hash=dvc_locked_hash(repo_dir, relative),
        weights_sha256=file_sha256(model_dir / "model.safetensors"), trained=trained_as(model_dir),
    )
    with atomic_directory(out_dir) as staging:
        for item in model_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        if format == "onnx":
            from crosstune.inference.onnx_export import (
                ONNX_NAME,
                onnx_card_section,
                write_onnx,
            )

            write_onnx(model_dir, staging / ONNX_NAME)
            card += onnx_card_section(staging / ONNX_NAME)
        if (staging / "tokenizer.json").is_file() and TASKS.get(settings["task"]).cleans_texts:
            card += _normalise_in_tokenizer(staging, repo_dir)
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
    return out_dir
