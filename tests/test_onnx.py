"""crosstune.inference.onnx_export / onnx_runtime: `crosstune export --format onnx` and `crosstune predict --onnx`.

Each tiny model (text, image, audio) is exported once per module through the CLI; ONNX Runtime's logits
must match PyTorch's on batches of other sizes (and, for text and audio, other lengths) than the traced one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    TEXTS,
    audio_batch,
    audio_model,
    image_model,
    tiny_model,
    token_batch,
    write_audio_folder,
    write_image_folder,
)

from crosstune.cli import main
from crosstune.inference.onnx_runtime import OnnxModel
from crosstune.inference.predictor import Predictor
from crosstune.transfer_model.storage import load_transfer_model, save_transfer_model

MODALITIES = ("text", "image", "audio")
TOLERANCE = 1e-4  # max abs logit difference, ONNX Runtime vs PyTorch (float32)


def _card_files(root: Path) -> list[str]:
    """The JSON files export puts on the model card, minimal."""
    paths = {"--metrics": root / "eval.json", "--backbone-summary": root / "backbone.json",
             "--data-summary": root / "summary.json"}
    for path in paths.values():
        path.write_text(json.dumps({}), encoding="utf-8")
    return [item for option, path in paths.items() for item in (option, str(path))]


def _save(modality: str, directory: Path) -> Path:
    """A tiny random model of ``modality`` saved as a trained model directory."""
    tokenizer = None
    if modality == "text":
        model, tokenizer = tiny_model(seed=1)
    elif modality == "image":
        model = image_model("tiny-cnn", seed=1)
    else:
        model = audio_model("tiny-audio-cnn", seed=1)
    save_transfer_model(model.eval(), directory, tokenizer, extra={"max_length": 32})
    (directory / "params.json").write_text(json.dumps({}), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per modality: the saved model directory ("<modality>") and its ONNX export ("<modality>-onnx")."""
    root = tmp_path_factory.mktemp("onnx")
    card = _card_files(root)
    paths: dict[str, Path] = {}
    for modality in MODALITIES:
        paths[modality] = _save(modality, root / modality)
        paths[f"{modality}-onnx"] = root / f"{modality}-onnx"
        main(["export", "--format", "onnx", "--model", str(paths[modality]), "--out", str(paths[f"{modality}-onnx"]),
              *card, "--repo", str(root)])
    return paths


def _batches(modality: str, model: torch.nn.Module, tokenizer: object) -> list[dict[str, torch.Tensor]]:
    """Batches of sizes (and lengths) other than the traced example's (2 rows, 8 tokens, 1 s clips)."""
    if modality == "text":
        short = token_batch(tokenizer, TEXTS[:5])
        long = token_batch(tokenizer, [" ".join(TEXTS[5:8])] + TEXTS[8:10])
        assert short[0].shape[1] != long[0].shape[1] and 8 not in (short[0].shape[1], long[0].shape[1])
        return [{"input_ids": ids, "attention_mask": mask} for ids, mask in (short, long, (short[0][:1], short[1][:1]))]
    if modality == "image":
        generator = torch.Generator().manual_seed(3)
        return [{"pixel_values": torch.randn(count, 3, 32, 32, generator=generator)} for count in (5, 1)]
    longer = audio_model("tiny-audio-cnn", seed=1, clip_samples=12000)  # same weights, 1.5 s clips
    return [{"input_features": audio_batch(model, 5, seed=3)}, {"input_features": audio_batch(longer, 3, seed=4)}]


@pytest.mark.parametrize("modality", MODALITIES)
def test_onnx_runtime_matches_pytorch_on_other_shapes(exported: dict[str, Path], modality: str) -> None:
    onnx_dir = exported[f"{modality}-onnx"]
    assert {"model.onnx", "model.onnx.data", "config.json", "model.safetensors", "README.md"} <= \
        {path.name for path in onnx_dir.iterdir()}
    assert "## ONNX" in (onnx_dir / "README.md").read_text(encoding="utf-8")
    model, _ = load_transfer_model(exported[modality])
    tokenizer = Predictor.from_directory(onnx_dir, runtime="onnx").tokenizer
    session = OnnxModel(onnx_dir / "model.onnx")
    for inputs in _batches(modality, model, tokenizer):
        with torch.inference_mode():
            expected = model(**inputs)
        produced = session(**inputs)
        difference = float((produced - expected).abs().max())
        assert produced.shape == expected.shape and difference <= TOLERANCE, (modality, difference)


def _input_table(modality: str, root: Path) -> Path:
    """A small CSV of new inputs: texts, or image / recording paths relative to the file."""
    if modality == "text":
        values = TEXTS[:7]
    else:
        folder = write_image_folder(root / "images", 2, seed=9) if modality == "image" else \
            write_audio_folder(root / "audio", 2, seed=9)
        values = sorted(str(path.relative_to(root)) for path in folder.rglob("*.*"))
    path = root / "new.csv"
    pd.DataFrame({"text": values}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("modality", MODALITIES)
def test_predict_onnx_cli_gives_pytorchs_labels(exported: dict[str, Path], modality: str, tmp_path: Path) -> None:
    table = _input_table(modality, tmp_path)
    main(["predict", "--model", str(exported[modality]), "--input", str(table), "--output", str(tmp_path / "torch.csv")])
    main(["predict", "--onnx", "--model", str(exported[f"{modality}-onnx"]), "--input", str(table),
          "--output", str(tmp_path / "onnx.csv")])
    expected, produced = pd.read_csv(tmp_path / "torch.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert len(produced) == len(expected) > 0
    assert produced["predicted_label"].tolist() == expected["predicted_label"].tolist()
    assert produced["predicted_score"].tolist() == pytest.approx(expected["predicted_score"].tolist(), abs=1e-5)


def test_missing_onnx_names_the_directory_and_the_command(exported: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="crosstune export --format onnx --out DIR") as raised:
        Predictor.from_directory(exported["text"], runtime="onnx")
    assert str(exported["text"]) in str(raised.value) and "model.onnx" in str(raised.value)
    table = _input_table("image", tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.onnx"):
        main(["predict", "--onnx", "--model", str(exported["image"]), "--input", str(table), "--output", "y.csv"])
    with pytest.raises(ValueError, match=r"runtime 'tensorrt'; valid: \['torch', 'onnx'\]"):
        Predictor.from_directory(exported["text"], runtime="tensorrt")


def test_default_export_format_writes_no_onnx(exported: dict[str, Path], tmp_path: Path) -> None:
    main(["export", "--model", str(exported["image"]), "--out", str(tmp_path / "plain"), *_card_files(tmp_path),
          "--repo", str(tmp_path)])
    names = {path.name for path in (tmp_path / "plain").iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names and "model.onnx" not in names
    assert "## ONNX" not in (tmp_path / "plain" / "README.md").read_text(encoding="utf-8")
