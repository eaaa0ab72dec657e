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
        from crosstune.modalities import modality_of_config
        from crosstune.transfer_model.settings import model_settings
        from crosstune.transfer_model.storage import CONFIG_NAME, load_transfer_model

        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}; valid: {list(RUNTIMES)}")
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{directory}: {'is a file, not' if directory.exists() else 'no such'} directory; pass a crosstune "
                f"model directory such as models/finetuned (made by `dvc repro`) or one `crosstune export` wrote.")
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{directory}: no config.json; pass a crosstune model directory such as models/finetuned "
                f"(made by `dvc repro`)."
            )
        if runtime == "onnx":
            from crosstune.inference.onnx_runtime import load_onnx_model

            model: Any = load_onnx_model(directory, device)
            config = model_settings(read_artifact_json(directory / CONFIG_NAME))  # either config.json form
            device = "cpu"  # ONNX Runtime is fed numpy arrays, which live in host memory
        else:
            model, config = load_transfer_model(directory)
            model = model.to(device)
        return cls(model, modality_of_config(config).load_tokenizer(directory), config, device, str(directory))

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    @property
    def modality(self) -> str:
        return str(self.config.get("modality", "text"))

    def predict(self, inputs: Sequence[Any], batch_size: int = 64) -> list[dict[str, Any]]:
        """Predict for each input (texts, or image or recording paths for an image or audio model) what the
        model's task predicts: ``{"label", "score"}`` for classification, ``{"value"}`` for regression."""
        from crosstune.data.batching import batching_for
        from crosstune.inference.outputs import predict_outputs
        from crosstune.modalities import get_modality
        from crosstune.tasks.registry import TASKS
        from crosstune.transfer_model.settings import saved_max_length

        task = TASKS.get(self.config["task"])
        max_length = saved_max_length(self.config, self.source)
        task.check_new_inputs(inputs, self.config)
        split = task.decode_inputs(inputs, self.config)
        if split is None:
            split = get_modality(self.modality).decode(inputs, self.config, self.tokenizer, max_length)
        batching = batching_for(self.config, batch_size, max_length)
        outputs = task.predict_split(self.model, split, batching, self.device) if task.model_form != "head" else \
            predict_outputs(self.model, split, batching, self.device)
        return task.prediction_records(outputs, split, self.labels)

    def input_column(self, columns: Sequence[str]) -> str:
        """The column of a new table (``columns``) that holds the inputs: the one the model was trained from
        (recorded at training), else one named after the modality (``text``, ``image``, ``audio``: the prepared
        splits' name), else ``text`` (the one name every model has read); the first the table has."""
        candidates = [str(name) for name in (self.config.get("input_column"), self.modality, "text") if name]
        return next((name for name in candidates if name in columns), candidates[0])

    def predict_file(self, input_path: str | Path, output_path: str | Path, text_column: str | None = None,
                     draw: str | Path | None = None) -> int:
        """Label every row of a CSV/TSV/Parquet file (``text_column``, by default :meth:`input_column`, holds texts,
        or image or recording paths relative to the file for an image or audio model), or every image or recording
        of a folder; writes its columns plus the predictions as CSV, or as JSON (``.json``: one list; ``.jsonl``:
        a line per input) by ``output_path``'s suffix. ``draw``: a folder for the images with their predictions
        drawn (a detector's boxes)."""
        import pandas as pd

        from crosstune.data.tables import read_table
        from crosstune.errors import DataError
        from crosstune.modalities import get_modality, modality_of_values

        if draw is not None:
            from crosstune.tasks.registry import TASKS

            TASKS.get(self.config["task"]).check_drawing(str(draw))
        if Path(input_path).is_dir():
            frame = self._folder_frame(Path(input_path))
            text_column = self.modality
        else:
            frame = read_table(input_path)
        given = text_column is not None
        text_column = text_column or self.input_column(list(frame.columns))
        if text_column not in frame.columns:
            where = "given by --text-column" if given else \
                f"the column {self.source} was trained from, nor {self.modality!r} or 'text'"
            raise DataError(f"{input_path}: no column {text_column!r} ({where}; columns: {list(frame.columns)}); "
                            f"pass --text-column with the column that holds the "
                            f"{'texts' if self.modality == 'text' else self.modality + ' paths'}.")
        empty = frame[text_column].isna()
        if empty.any():
            rows = [int(i) + 1 for i in empty[empty].index[:5]]
            raise DataError(f"{input_path}: empty text at row(s) {rows}; fill or remove them.")
        given_values = frame[text_column].astype(str).tolist()
        held = modality_of_values(given_values[:50]).name
        if held != self.modality:
            raise DataError(
                f"{input_path}: column {text_column!r} holds {held} inputs (row 1: {given_values[0][:60]!r}), but "
                f"{self.source} is a {self.modality} {self.config.get('task', 'classification')} model; label them "
                f"with a {held} model, or pass --text-column with the column that holds {self.modality} inputs.")
        values = get_modality(self.modality).resolve_paths(given_values, Path(input_path))
        import json

        records = self.predict(values)
        if draw is not None:
            from crosstune.tasks.registry import TASKS

            TASKS.get(self.config["task"]).draw_predictions(values, records, Path(draw), self.labels)
        if Path(output_path).suffix.lower() in (".json", ".jsonl"):
            rows = [{**{str(key): value for key, value in row.items()}, **record}
                    for row, record in zip(frame.to_dict(orient="records"), records)]
            _write_json_records(Path(output_path), rows)
            return len(frame)
        from crosstune.io import write_csv

        results = pd.DataFrame(records)
        for column in results.columns:  # nested values (a tagger's entities) as JSON, not Python's repr
            if results[column].map(lambda value: isinstance(value, (list, dict))).any():
                results[column] = results[column].map(json.dumps)
        prefixed = results.rename(columns={column: f"predicted_{column}" for column in results.columns})
        write_csv(output_path, pd.concat([frame.reset_index(drop=True), prefixed], axis=1))
        return len(frame)

    def _folder_frame(self, folder: Path) -> "Any":
        """Every file of the model's modality under ``folder`` (sorted, recursive), as a one-column table."""
        import pandas as pd

        from crosstune.errors import DataError
        from crosstune.modalities import get_modality

        suffixes = get_modality(self.modality).folder_suffixes
        files = sorted(str(path) for path in folder.resolve().rglob("*")
                       if path.is_file() and path.suffix.lower() in suffixes)
        if not suffixes or not files:
            raise DataError(f"--input {folder}: no {self.modality} files ({', '.join(suffixes) or 'texts come in '}"
                            f"{'' if suffixes else 'a table'}) in this folder; pass a table, or a folder of them.")
        return pd.DataFrame({self.modality: files})


def _write_json_records(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as one JSON list (``.json``) or one object per line (``.jsonl``), atomically."""
    import json

    from crosstune.io import atomic_path

    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            if path.suffix.lower() == ".jsonl":
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            else:  # one list, an input per line
                handle.write("[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n")
