"""An exported ``model.onnx`` run by ONNX Runtime behind the call the batching loop makes on a PyTorch model.

:func:`crosstune.inference.outputs.predict_outputs` calls ``model(**batch.inputs)`` and reads ``model.training``;
:class:`OnnxModel` answers both, so the predictor's preprocessing and batching serve either runtime unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

EXPORT_COMMAND = "crosstune export --format onnx --out DIR"


class OnnxModel:
    """An ONNX Runtime session over ``model.onnx``, called like the PyTorch model.

    Shape:
        the graph's inputs (``Batch.inputs``) -> (B, num_outputs) float32 ``logits``
    """

    training = False  # never trains: predict_outputs then has no train mode to restore

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent}: no {path.name}; make it with `{EXPORT_COMMAND}` and pass that "
                                    f"DIR, or drop --onnx to run model.safetensors with PyTorch.")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch was given (base.num_threads)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=_providers(device, onnxruntime))
        self.input_names = [value.name for value in self.session.get_inputs()]
        self.path = path

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        missing = sorted(set(self.input_names) - set(inputs))
        if missing:
            raise ValueError(f"{self.path}: the graph needs inputs {missing} the batch lacks (it has {sorted(inputs)}); "
                             f"re-export it with `{EXPORT_COMMAND}` from the same model.")
        feed = {name: inputs[name].detach().cpu().numpy() for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return torch.from_numpy(logits)


def _providers(device: str, onnxruntime: Any) -> list[str]:
    """ONNX Runtime's execution providers for a torch-style device name."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = onnxruntime.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device {device!r}: this onnxruntime offers {available}; use device cpu, or install "
                     f"onnxruntime-gpu for cuda.")


def load_onnx_model(directory: str | Path, device: str = "cpu") -> OnnxModel:
    """The ``model.onnx`` of an exported directory; a missing one is a FileNotFoundError naming the command."""
    from crosstune.inference.onnx_export import ONNX_NAME

    return OnnxModel(Path(directory) / ONNX_NAME, device)
