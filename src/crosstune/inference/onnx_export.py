"""``crosstune export --format onnx``: the model's forward pass as an ONNX graph, for ONNX Runtime.

What the graph covers is exactly what the batching loop feeds the PyTorch model (``Batch.inputs``),
so preprocessing stays in crosstune and is shared by both runtimes:

- text: ``input_ids`` (B, T) int64 and ``attention_mask`` (B, T) int64 -> ``logits`` (B, num_outputs);
  tokenizing (the tokenizer files are copied beside the graph) and length-bucketed padding stay outside.
- image: ``pixel_values`` (B, 3, S, S) float32, already resized and normalised -> ``logits``.
- audio: ``input_features`` (the backbone's own features, e.g. (B, 80, T) log-mel for Whisper) -> ``logits``.
- a detector: ``images`` (B, 3, H, W) in [0, 1], letterboxed onto its canvas -> per location of every pyramid
  level, FCOS's class logits, box regression and centre-ness side by side (B, L, K + 5); the anchors, score
  threshold and NMS run after the graph with torchvision's own code, as in PyTorch
  (:class:`crosstune.detection.inference.OnnxDetector`).
  The feature front end (STFT, mel filters, Whisper's feature extractor) is *not* in the graph: it is not
  part of ``AudioTransferModel.forward`` but of the batcher (:class:`crosstune.data.audio.AudioBatcher`),
  and ``crosstune predict --onnx`` runs it before the graph as for PyTorch.

Dynamic axes: batch for every modality, plus sequence length for text and time for audio where the
exported graph allows it (see :meth:`~crosstune.transfer_model.modules.AudioTransferModel.time_axis`). The exporter is ``torch.onnx.export(dynamo=True)``
(torch.export + onnxscript): it traces every backbone here, the Hugging Face encoders included.

Use :func:`export_onnx`; it writes the graph next to a copy of the model directory and its model card
(:func:`crosstune.inference.export.export_model` with ``format="onnx"``), atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crosstune.errors import ArtifactError, ConfigError
from crosstune.pipeline import metrics_files

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"  # torch.onnx writes the weights beside it as model.onnx.data
OUTPUT_NAME = "logits"
# torch 2.14's exporter builds opset-20 graphs natively (no version conversion pass); ONNX Runtime >= 1.17 runs them.
OPSET = 20
CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-4  # ONNX Runtime against PyTorch on the example: float32 kernel differences only


class _PositionalInputs(nn.Module):
    """The model with its inputs as positional arguments in ``names`` order.

    Why: ``TransferModel.forward`` takes ``**inputs``, and torch.export needs a fixed signature to name
    the graph's inputs and give each its dynamic axes.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.onnx_outputs(**dict(zip(self.names, inputs)))


def input_names(model: Any) -> tuple[str, ...]:
    """The keys of ``Batch.inputs`` for this model's modality: the graph's input names."""
    return model.onnx_input_names()


def example_inputs(model: Any) -> tuple[torch.Tensor, ...]:
    """A batch shaped as the batching loop makes them, to trace the model with (the model's modality says how:
    :meth:`crosstune.transfer_model.modules.TransferModel.onnx_example_inputs`)."""
    return model.onnx_example_inputs(torch.Generator().manual_seed(0))


def dynamic_shapes(model: Any) -> tuple[dict[int, Any], ...]:
    """Per input, its dynamic axes as torch.export ``Dim`` objects (their names become the graph's axis names)."""
    return model.onnx_dynamic_shapes()


def write_onnx(model_dir: str | Path, path: str | Path, opset: int = OPSET) -> None:
    """Trace the model saved in ``model_dir`` into an ONNX graph at ``path``, check it, and check that ONNX
    Runtime gives the PyTorch model's logits on the example batch.

    Args:
        model_dir: a crosstune model directory (``config.json`` + ``model.safetensors``).
        path: the ``.onnx`` file to write (its weights go beside it as ``<name>.data``).
        opset: the ONNX opset of the graph.
    """
    import onnx

    from crosstune.inference.onnx_runtime import OnnxModel
    from crosstune.transfer_model.storage import load_transfer_model

    model, config = load_transfer_model(model_dir)
    if not type(model).new_head:  # a whole encoder-decoder (transcription) generates token by token
        raise ConfigError(f"{model_dir}: a {config.get('task')} model is an encoder-decoder that writes its output "
                          f"token by token, which this ONNX export (one forward pass) does not cover; export with "
                          f"--format safetensors (a stock Hugging Face directory) and convert that with Hugging "
                          f"Face Optimum (`optimum-cli export onnx --model DIR OUT`).")
    names = input_names(model)
    example = example_inputs(model)
    wrapper = _PositionalInputs(model, names).eval()
    # dynamic_shapes has one entry per forward parameter: the wrapper's one is ``*inputs``.
    torch.onnx.export(wrapper, example, str(path), input_names=list(names), output_names=[OUTPUT_NAME],
                      opset_version=opset, dynamo=True, dynamic_shapes=(dynamic_shapes(model),),
                      external_data=True, verbose=False)
    onnx.checker.check_model(str(path), full_check=True)
    with torch.inference_mode():
        expected = wrapper(*example).float()
    produced = OnnxModel(path)(**dict(zip(names, example)))
    difference = float((produced - expected).abs().max())
    if not torch.allclose(produced, expected, rtol=CHECK_RTOL, atol=CHECK_ATOL):
        raise ArtifactError(f"{path}: ONNX Runtime's logits differ from PyTorch's by up to {difference:.3g} on the "
                            f"example batch; export with --format safetensors and use PyTorch for this model.")
    logger.info("traced %s to ONNX (opset %d, inputs %s); ONNX Runtime vs PyTorch max abs diff %.3g on the example",
                model_dir, opset, list(names), difference)


def onnx_card_section(path: str | Path) -> str:
    """The model card's ONNX section: the graph's inputs and output with their axes, and how to run it."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    opset = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))

    def row(value: Any) -> str:
        dims = [dim.dim_param or str(dim.dim_value) for dim in value.type.tensor_type.shape.dim]
        element = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return f"| `{value.name}` | ({', '.join(dims)}) | {element} |"

    values = [*graph.graph.input, *graph.graph.output]
    table = "\n".join(["| tensor | shape | dtype |", "| --- | --- | --- |", *(row(value) for value in values)])
    return f"""
## ONNX

`{ONNX_NAME}` (weights in `{ONNX_NAME}.data` beside it; opset {opset}) is the model's forward pass, from what
crosstune's batching feeds it (token ids, normalised pixels, or the backbone's audio features; named axes are
dynamic) to `{OUTPUT_NAME}`:

{table}

`crosstune predict --onnx --model path/to/this/directory --input new.csv --output labelled.csv` runs it with
ONNX Runtime after the same preprocessing as PyTorch.
"""


def export_onnx(model_dir: str | Path, out_dir: str | Path, eval_metrics: str | Path = metrics_files.TEST,
                backbone_summary: str | Path = metrics_files.BACKBONE,
                data_summary: str | Path = "data/prepared/summary.json", repo_dir: str | Path = ".") -> Path:
    """Copy ``model_dir`` to ``out_dir`` with its model card and ``model.onnx`` (atomically); returns ``out_dir``.

    The copy keeps ``model.safetensors``, so the directory also loads with ``crosstune.load``.
    """
    from crosstune.inference.export import export_model

    return export_model(model_dir, out_dir, eval_metrics, backbone_summary, data_summary, repo_dir, format="onnx")
