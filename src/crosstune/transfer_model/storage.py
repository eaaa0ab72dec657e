"""A :class:`~crosstune.transfer_model.modules.TransferModel` saved as a Hugging Face-style directory and
loaded back: ``config.json`` (everything needed to rebuild the modules: backbone config, head, pooling,
labels, freeze policy), ``model.safetensors`` and the tokenizer files. Loading never unpickles code: the
modules are rebuilt from the JSON config and the tensors come from safetensors.

A ``head.type: hf`` model (:mod:`crosstune.heads.hf`) is saved in the Hugging Face form instead: the stock
model of the task's Hugging Face auto class (``...ForSequenceClassification``: Hugging Face config and tensor
names) with crosstune's fields under ``config.json``'s ``crosstune`` key, so ``transformers`` and
:func:`load_transfer_model` both load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crosstune.errors import ArtifactError
from crosstune.heads.registry import HF_HEAD
from crosstune.io import (
    artifact_fix,
    load_tensors,
    load_weights,
    read_artifact_json,
    read_json,
    write_json,
)
from crosstune.modalities import MODALITIES, modality_of_config
from crosstune.transfer_model.modules import (
    TransferModel,
    build_transfer_model,
    portable_config,
)
from crosstune.transfer_model.settings import (
    HF_SECTION,
    is_hf_form,
    model_settings,
    saved_head,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_transfer_model(model: TransferModel, directory: str | Path, tokenizer: Any = None,
                        extra: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer, where the modality has one) into
    ``directory``; in the Hugging Face form (see the module docstring) for an hf head."""
    from safetensors.torch import save_model

    from crosstune.backbones.text import save_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    form = _model_form(model.spec)
    if form == "recogniser":  # a whole recogniser: always the stock Hugging Face form
        from crosstune.transcription.storage import save_recogniser

        save_recogniser(model, directory, tokenizer, extra)
        return
    if form == "detector":  # a torchvision detector: its own config (crosstune.detection.storage)
        from crosstune.detection.storage import save_detector

        save_detector(model, directory, extra)
        return
    if model.spec["head"]["type"] == HF_HEAD:
        _save_hf_form(model, directory, extra)
    else:
        config = {"model_type": MODALITIES.get(model.modality).model_type, "modality": model.modality,
                  **model.spec, **model.backbone_entry(), **(extra or {})}
        write_json(directory / CONFIG_NAME, config)
        save_model(model, str(directory / WEIGHTS_NAME))
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)


def _save_hf_form(model: TransferModel, directory: Path, extra: dict[str, Any] | None) -> None:
    """The stock Hugging Face directory of the task's auto class: its config (the task's fields: label maps,
    problem type) with crosstune's fields under ``crosstune``, and the tensors under the Hugging Face names."""
    from safetensors.torch import save_file

    from crosstune.heads.hf import hf_config, hf_state_dict

    spec = model.spec
    config = hf_config(model.backbone.config, spec["head"]["num_outputs"], spec["head"]["dropout"], spec["labels"],
                       spec["task"])
    config.architectures = [type(model.head.model).__name__]
    hf_fields = {key: value for key, value in portable_config(config).items() if key != HF_SECTION}
    write_json(directory / CONFIG_NAME, {**hf_fields, HF_SECTION: {"modality": model.modality, **spec,
                                                                   **(extra or {})}})
    # "format": "pt" is what transformers' from_pretrained checks a safetensors file for.
    save_file(hf_state_dict(model.backbone, model.head), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


def load_transfer_model(directory: str | Path) -> tuple[TransferModel, dict[str, Any]]:
    """Rebuild a :class:`TransferModel` from its directory; returns the model and its config.

    The freeze policy in the config is *not* applied here (``requires_grad`` is not saved with the
    weights): callers that train apply the saved one (:func:`crosstune.transfer_model.settings.saved_freeze`,
    :func:`crosstune.freezing.policy.apply_policy`). A missing, truncated or corrupt file is an
    :class:`~crosstune.errors.ArtifactError` naming the file and the fix. The config returned has crosstune's
    fields at the top level in either form (:func:`crosstune.transfer_model.settings.model_settings`).
    """
    directory = Path(directory)
    raw = read_artifact_json(directory / CONFIG_NAME)
    config = model_settings(raw)
    form = _model_form(config)
    if form == "recogniser":
        from crosstune.transcription.storage import load_recogniser

        return load_recogniser(directory)
    if form == "detector":
        from crosstune.detection.storage import load_detector

        return load_detector(directory)
    model_types = sorted(MODALITIES.get(name).model_type for name in MODALITIES)
    if not is_hf_form(raw) and config.get("model_type") not in model_types:
        raise ArtifactError(
            f"{directory / CONFIG_NAME}: model_type is {config.get('model_type')!r}, not one of "
            f"{model_types} and it has no {HF_SECTION!r} section; this is not a crosstune model "
            f"directory (run the attach-head or finetune stage to make one)."
        )
    try:
        backbone = modality_of_config(config).rebuild_backbone(config)
        head = saved_head(config)
        model = build_transfer_model(
            backbone, task=config["task"], labels=config["labels"], head_type=head.type, pooling=head.pooling,
            dropout=head.dropout, hidden_dim=head.hidden_dim, seed=0,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{directory / CONFIG_NAME}: incomplete or malformed ({type(error).__name__}: {error}); "
                            f"{artifact_fix(directory)}") from error
    model.spec = {key: config[key] for key in ("task", "labels", "pooling", "head", "freeze", "input_column",
                                               "lowercase") if key in config}
    load_model_weights(model, directory, hf_form=is_hf_form(raw))
    model.eval()
    return model, config


def _model_form(config: dict[str, Any]) -> str:
    """The task's model form (:attr:`crosstune.tasks.base.Task.model_form`) a model's spec or config records."""
    from crosstune.tasks.registry import TASKS

    return TASKS.get(config["task"]).model_form if config.get("task") in TASKS else "head"


def load_model_weights(model: TransferModel, directory: str | Path, hf_form: bool | None = None) -> None:
    """Load the weights saved in ``directory`` into ``model`` (built for the same architecture), from either
    form: how fine-tuning starts from the probe's fitted head without rebuilding the model."""
    directory = Path(directory)
    if hf_form is None:
        hf_form = is_hf_form(read_artifact_json(directory / CONFIG_NAME))
    if hf_form:
        _load_hf_weights(model, directory / WEIGHTS_NAME)
    else:
        load_weights(model, directory / WEIGHTS_NAME)


def _load_hf_weights(model: TransferModel, path: Path) -> None:
    """Load a Hugging Face-form ``model.safetensors`` (Hugging Face tensor names) into ``model``."""
    from crosstune.heads.hf import hf_names

    tensors = load_tensors(path)
    names = hf_names(model.backbone, model.head)
    missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise ArtifactError(f"{path}: does not match its config.json (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); {artifact_fix(path)}")
    try:
        model.load_state_dict({names[name]: value for name, value in tensors.items()}, strict=True)
    except RuntimeError as error:  # a tensor of the wrong shape
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactError(f"{path}: does not match its config.json ({first_line}); {artifact_fix(path)}") from error


def backbone_config(config: dict[str, Any]) -> Any:
    """The Hugging Face config of a saved text model's backbone (``config``: the model's settings)."""
    from transformers import AutoConfig

    from crosstune.backbones.static import register_architecture

    register_architecture()  # crosstune's own text architecture (static token embeddings)
    fields = dict(config["backbone_config"])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved beside a text model (told the backbone's config, not crosstune's)."""
    from transformers import AutoTokenizer

    config = model_settings(read_json(Path(directory) / CONFIG_NAME))
    return AutoTokenizer.from_pretrained(str(directory), config=backbone_config(config))
