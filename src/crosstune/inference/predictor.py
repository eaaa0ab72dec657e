"""Use a fine-tuned model directory on new inputs: ``crosstune.load(DIR).predict(texts_or_image_paths)``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnx")  # model.safetensors in PyTorch, or model.onnx in ONNX Runtime


@dataclass
class Predictor:
    """A loaded model (a PyTorch module, or an :class:`~crosstune.inference.onnx_runtime.OnnxModel`), its
    tokenizer and the settings it was trained with."""

    model: Any
    tokenizer: Any
    config: dict[str, Any]
    device: str = "cpu"
    source: str = "."  # the directory it was loaded from, named in errors

    @classmethod
    def from_directory(cls, directory: str | Path, device: str = "cpu", runtime: str = "torch") -> "Predictor":
        """Load ``config.json`` + tokenizer from ``directory``, and the model: ``model.safetensors`` in PyTorch
        (``runtime="torch"``), or ``model.onnx`` in ONNX Runtime (``runtime="onnx"``, written by
        ``crosstune export --format onnx``). Preprocessing and batching are the same for both."""
        from crosstune.io import read_artifact_json
        from crosstune.model.transfer_model import (
            CONFIG_NAME,
            load_tokenizer,
            load_transfer_model,
        )

        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}; valid: {list(RUNTIMES)}")
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{directory}: no config.json; pass a crosstune model directory such as models/finetuned "
                f"(made by `dvc repro`)."
            )
        if runtime == "onnx":
            from crosstune.inference.onnx_runtime import load_onnx_model
            from crosstune.model.saved import model_settings

            model: Any = load_onnx_model(directory, device)
            config = model_settings(read_artifact_json(directory / CONFIG_NAME))  # either config.json form
            device = "cpu"  # ONNX Runtime is fed numpy arrays, which live in host memory
        else:
            model, config = load_transfer_model(directory)
            model = model.to(device)
        tokenizer = load_tokenizer(directory) if config.get("modality", "text") == "text" else None
        return cls(model, tokenizer, config, device, str(directory))

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    @property
    def modality(self) -> str:
        return str(self.config.get("modality", "text"))

    def predict(self, inputs: Sequence[Any], batch_size: int = 64) -> list[dict[str, Any]]:
        """Label each input (texts, or image or recording paths for an image or audio model): ``{"label", "score"}``
        (classification) or ``{"value"}`` (regression)."""
        import torch

        from crosstune.data.batching import batching_for
        from crosstune.inference.outputs import outputs_to_predictions, predict_outputs
        from crosstune.model.saved import saved_max_length

        max_length = saved_max_length(self.config, self.source)
        if self.modality == "image":
            from crosstune.data.images import ImageSplit, decode_images

            size = int(self.config["backbone"]["preprocessing"]["image_size"])
            split: Any = ImageSplit(decode_images([str(path) for path in inputs], size), torch.zeros(len(inputs)))
        elif self.modality == "audio":
            from crosstune.backbones.audio_features import AudioPreprocessing
            from crosstune.data.audio import AudioSplit, decode_audio

            clip = AudioPreprocessing.from_dict(self.config["backbone"]["preprocessing"])
            waveforms = decode_audio([str(path) for path in inputs], clip.sample_rate, clip.clip_samples, clip.align)
            split = AudioSplit(waveforms, torch.zeros(len(inputs)))
        else:
            from crosstune.data.preparation import normalise_text
            from crosstune.data.text_encoding import encode_texts

            clean = [normalise_text(str(text)) for text in inputs]
            split = encode_texts(self.tokenizer, clean, torch.zeros(len(clean)), max_length)
        batching = batching_for(self.config, batch_size, max_length)
        outputs = predict_outputs(self.model, split, batching, self.device)
        predicted, confidence = outputs_to_predictions(outputs, self.config["task"])
        if self.config["task"] == "classification":
            return [{"label": self.labels[index], "score": score} for index, score in zip(predicted, confidence)]
        return [{"value": value} for value in predicted]

    def predict_file(self, input_path: str | Path, output_path: str | Path, text_column: str = "text") -> int:
        """Label every row of a CSV/TSV/Parquet file (``text_column`` holds texts, or image or recording paths
        relative to the file for an image or audio model); writes its columns plus the predictions as CSV."""
        import pandas as pd

        from crosstune.data.tables import read_table
        from crosstune.errors import DataError
        from crosstune.io import write_csv

        frame = read_table(input_path)
        if text_column not in frame.columns:
            raise DataError(f"{input_path}: no column {text_column!r} (columns: {list(frame.columns)}); "
                            f"pass --text-column with the right name.")
        empty = frame[text_column].isna()
        if empty.any():
            rows = [int(i) + 1 for i in empty[empty].index[:5]]
            raise DataError(f"{input_path}: empty text at row(s) {rows}; fill or remove them.")
        values = frame[text_column].astype(str).tolist()
        if self.modality in ("image", "audio"):
            values = [str(Path(value) if Path(value).is_absolute() else Path(input_path).parent / value)
                      for value in values]
        results = pd.DataFrame(self.predict(values))
        prefixed = results.rename(columns={column: f"predicted_{column}" for column in results.columns})
        write_csv(output_path, pd.concat([frame.reset_index(drop=True), prefixed], axis=1))
        return len(frame)
