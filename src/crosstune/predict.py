"""Use a fine-tuned model directory on new texts: ``crosstune.load(DIR).predict(texts)``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A loaded model, its tokenizer and the settings it was trained with."""

    model: Any
    tokenizer: Any
    config: dict[str, Any]
    device: str = "cpu"

    @classmethod
    def from_directory(cls, directory: str | Path, device: str = "cpu") -> "Predictor":
        """Load ``config.json`` + ``model.safetensors`` + tokenizer from ``directory``."""
        from crosstune.modeling import load_tokenizer, load_transfer_model

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"{directory}: no config.json; pass a crosstune model directory such as models/finetuned "
                f"(made by `dvc repro`)."
            )
        model, config = load_transfer_model(directory)
        return cls(model.to(device), load_tokenizer(directory), config, device)

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """Label each text: ``{"label", "score"}`` (classification) or ``{"value"}`` (regression)."""
        import torch

        from crosstune.data import normalise_text
        from crosstune.encoding import encode_texts
        from crosstune.inference import outputs_to_predictions, predict_outputs

        max_length = int(self.config.get("max_length", 512))
        clean = [normalise_text(str(text)) for text in texts]
        split = encode_texts(self.tokenizer, clean, torch.zeros(len(clean)), max_length)
        outputs = predict_outputs(self.model, split, batch_size, max_length, self.device)
        predicted, confidence = outputs_to_predictions(outputs, self.config["task"])
        if self.config["task"] == "classification":
            return [{"label": self.labels[index], "score": score} for index, score in zip(predicted, confidence)]
        return [{"value": value} for value in predicted]

    def predict_file(self, input_path: str | Path, output_path: str | Path, text_column: str = "text") -> int:
        """Label every row of a CSV/TSV/Parquet file; writes its columns plus the predictions as CSV."""
        import pandas as pd

        from crosstune.data import read_table
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
        results = pd.DataFrame(self.predict(frame[text_column].astype(str).tolist()))
        prefixed = results.rename(columns={column: f"predicted_{column}" for column in results.columns})
        write_csv(output_path, pd.concat([frame.reset_index(drop=True), prefixed], axis=1))
        return len(frame)
