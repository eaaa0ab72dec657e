"""crosstune.data: reading, validating and splitting tables and image folders, the source domain, text encoding and batching, text augmentation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    REPO_ROOT,
    make_texts,
    write_image_folder,
    write_params,
    write_source,
    write_table,
)

from crosstune.backbones.vision import (
    Preprocessing,
)
from crosstune.config import AugmentParams, PrepareParams
from crosstune.data.images import (
    ImageBatcher,
    ImageSplit,
    build_augmentation,
    decode_images,
)
from crosstune.data.splitting import normalise_text, prepare_target_data, read_table
from crosstune.data.text_encoding import EncodedSplit, iterate_batches
from crosstune.errors import DataError
from crosstune.pipeline.prepare import prepare_stage

PARAMS = PrepareParams(text_column="review", label_column="rating", validation_fraction=0.2)


def test_normalise_text_undoes_html_quotes_and_space() -> None:
    assert normalise_text('  "I couldn&rsquo;t   sleep\n at all"  ') == "I couldn’t sleep at all"
    assert normalise_text("Fine &amp; Dandy", lowercase=True) == "fine & dandy"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_reads_csv_tsv_and_parquet(tmp_path: Path, suffix: str) -> None:
    path = write_table(tmp_path / f"train{suffix}", make_texts(10, seed=0))
    data = prepare_target_data(path, None, PARAMS, seed=0)
    assert data.labels == ["negative", "neutral", "positive"]
    assert len(data.train) + len(data.validation) + len(data.test) == 30


def test_split_is_stratified_deterministic_and_disjoint(raw_data: dict[str, Path]) -> None:
    first = prepare_target_data(raw_data["train"], raw_data["test"], PARAMS, seed=3)
    second = prepare_target_data(raw_data["train"], raw_data["test"], PARAMS, seed=3)
    pd.testing.assert_frame_equal(first.train, second.train)
    assert set(first.train["text"]).isdisjoint(first.validation["text"])
    assert first.validation["label"].value_counts().to_dict() == {"negative": 6, "neutral": 6, "positive": 6}


def test_deduplicates_and_drops_test_overlap(tmp_path: Path) -> None:
    rows = make_texts(10, seed=0)
    test_rows = make_texts(5, seed=9)
    train = write_table(tmp_path / "train.csv", rows + rows[:4] + test_rows[:2])
    test = write_table(tmp_path / "test.csv", test_rows)
    data = prepare_target_data(train, test, PARAMS, seed=0)
    assert data.summary["duplicates_dropped"] == 4
    assert data.summary["test_overlap_dropped"] == 2
    assert not set(data.train["text"]) & set(data.test["text"])


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda p: p.write_text("", encoding="utf-8"), r"train\.csv: the file is empty"),
        (lambda p: p.write_text("review,rating\n", encoding="utf-8"), r"train\.csv: has a header but no rows"),
        (lambda p: p.write_text("text,label\na,b\n", encoding="utf-8"),
         r"missing column\(s\) \['review', 'rating'\].*prepare\.text_column"),
        (lambda p: p.write_text("review,rating\n" + "good,positive\n" * 3 + ",negative\n", encoding="utf-8"),
         r"empty or missing text in column 'review' at row\(s\) 4"),
        (lambda p: p.write_text("review,rating\nfine,\n", encoding="utf-8"), r"empty or missing label .* row\(s\) 1"),
        (lambda p: p.write_bytes(b"PAR1 not really parquet"), r"cannot be parsed"),
    ],
)
def test_malformed_train_file(tmp_path: Path, make_bad, message: str) -> None:
    path = tmp_path / ("train.parquet" if "parsed" in message else "train.csv")
    make_bad(path)
    with pytest.raises(DataError, match=message):
        prepare_target_data(path, None, PARAMS, seed=0)


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unsupported file type '\.xls'"):
        read_table(tmp_path / "data.xls")
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "absent.csv")


def test_unknown_test_label_names_rows_and_labels(raw_data: dict[str, Path], tmp_path: Path) -> None:
    test = write_table(tmp_path / "test.csv", make_texts(3, seed=5) + [("a brand new review", "mixed")])
    with pytest.raises(DataError, match=r"label\(s\) \['mixed'\] at row\(s\) 10 never occur in the training file"):
        prepare_target_data(raw_data["train"], test, PARAMS, seed=0)


def test_too_few_examples_per_class(tmp_path: Path) -> None:
    rows = make_texts(10, seed=0)
    rows = [row for row in rows if row[1] != "neutral"] + [r for r in rows if r[1] == "neutral"][:2]
    train = write_table(tmp_path / "train.csv", rows)
    with pytest.raises(DataError, match=r"too few training examples for class\(es\) 'neutral': 2.*min_examples_per_class"):
        prepare_target_data(train, None, PARAMS, seed=0)


def test_regression_requires_numeric_labels(tmp_path: Path) -> None:
    train = write_table(tmp_path / "train.csv", [("text one", "1.5"), ("text two", "high")])
    with pytest.raises(DataError, match=r"non-numeric label at row\(s\) 2"):
        prepare_target_data(train, None, PrepareParams(text_column="review", label_column="rating",
                                                        task="regression"), seed=0)


def test_failed_prepare_leaves_earlier_outputs_intact(raw_data: dict[str, Path], params_file: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(out), str(params_file))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    bad_test = write_table(tmp_path / "bad_test.csv", [("unseen label text", "mixed")])
    with pytest.raises(DataError):
        prepare_stage(str(raw_data["train"]), str(bad_test), str(out), str(params_file))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".prepared")]


def test_stage_script_exits_nonzero_with_clear_message(raw_data: dict[str, Path], params_file: Path,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,positive\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "prepare.py"), "--train", str(bad), "--out",
         str(tmp_path / "out"), "--params", str(params_file)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "crosstune: error:" in result.stderr and "bad.csv: missing column(s)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_reads_the_source_domain_and_maps_its_labels(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    renamed = {"negative": "bad", "neutral": "meh", "positive": "good"}
    write_source(tmp_path, renamed)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"source_label_map": {
        "bad": "negative", "meh": "drop", "good": "positive"}}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    source = pd.read_csv(tmp_path / "prepared" / "source.csv")
    assert set(source["label"]) == {"negative", "positive"} and len(source) == 40
    assert summary["source_size"] == 40 and summary["train_labelled"] == summary["train_size"]


def test_source_labels_outside_the_target_set_need_a_mapping(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    write_source(tmp_path, {"neutral": "mixed"})
    params = write_params(tmp_path / "params.yaml")
    with pytest.raises(DataError, match=r"\['mixed'\].*source_label_map"):
        prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                      str(tmp_path / "source"))
    params = write_params(tmp_path / "params.yaml", {"prepare": {"source_label_map": {"mixed": "neutral"}}})
    with pytest.raises(DataError, match=r"\['negative', 'positive'\] are missing from prepare.source_label_map"):
        prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                      str(tmp_path / "source"))


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.25, 18), (1.0, 72)])
def test_target_labelled_hides_the_rest_of_the_target_labels(tmp_path: Path, raw_data, fraction: float,
                                                             expected: int) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    write_source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"target_labelled": fraction}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    train = pd.read_csv(tmp_path / "prepared" / "train.csv", keep_default_na=False)
    assert summary["train_size"] == 72 and (train["label"] != "").sum() == summary["train_labelled"] == expected
    assert (pd.read_csv(tmp_path / "prepared" / "validation.csv")["label"] != "").all()


def test_hidden_target_labels_need_a_source_domain(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no source here")
    params = write_params(tmp_path / "params.yaml", {"prepare": {"target_labelled": 0.0}})
    with pytest.raises(DataError, match="prepare.target_labelled needs a labelled source domain"):
        prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                      str(tmp_path / "empty"))


def test_validation_from_the_source_domain(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    write_source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"validation_domain": "source",
                                                                "target_labelled": 0.0}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    validation = pd.read_csv(tmp_path / "prepared" / "validation.csv")
    assert validation["text"].str.startswith("gardening").all()
    assert summary["source_size"] + summary["validation_size"] == 60 and summary["train_size"] == 90


def test_text_augmentation_keeps_special_tokens_and_is_seeded() -> None:
    from crosstune.config import TextAugmentParams
    from crosstune.data.text_augmentation import augment_split, augment_tokens
    from crosstune.data.text_encoding import EncodedSplit

    class Tokenizer:
        mask_token_id, unk_token_id, pad_token_id = 103, 100, 0

    ids = torch.tensor([[101, 5, 6, 7, 8, 9, 102, 0], [101, 11, 12, 102, 0, 0, 0, 0]], dtype=torch.int32)
    split = EncodedSplit(ids, torch.tensor([7, 4]), torch.tensor([1, -1]))
    params = TextAugmentParams(copies=2, swap=0.3, delete=0.2, mask=0.2)
    out = augment_split(split, params, Tokenizer(), seed=3)
    assert len(out) == 6 and out.labels.tolist() == [1, -1, 1, -1, 1, -1]
    assert torch.equal(out.input_ids[:2, :8], ids)
    for row in range(2, 6):
        tokens = out.input_ids[row, : int(out.lengths[row])].tolist()
        assert tokens[0] == 101 and tokens[-1] == 102 and len(tokens) >= 3
    again = augment_split(split, params, Tokenizer(), seed=3)
    assert torch.equal(out.input_ids, again.input_ids)
    generator = torch.Generator().manual_seed(0)
    assert augment_tokens(list(range(20)), TextAugmentParams(delete=0.0, swap=0.0, mask=1.0), 103,
                          generator) == [103] * 20
    assert sorted(augment_tokens(list(range(20)), TextAugmentParams(delete=0.0, swap=0.5, mask=0.0), 103,
                                 generator)) == list(range(20))
    assert len(augment_tokens(list(range(200)), TextAugmentParams(delete=0.5, swap=0.0, mask=0.0), 103,
                              generator)) < 150


def test_backbone_stage_adds_augmented_copies_to_the_named_splits(tmp_path: Path, raw_data) -> None:
    from safetensors.torch import load_file

    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    write_source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"text_augment": {"copies": 2, "splits": ["source"]}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    backbone_stage(str(tmp_path / "prepared"), str(tmp_path / "backbone"), str(tmp_path / "encoded"),
                   str(tmp_path / "b.json"), str(tmp_path / "s.json"), str(tmp_path / "s.csv"), str(params))
    sizes = {name: len(load_file(str(tmp_path / "encoded" / f"{name}.safetensors"))["lengths"])
             for name in ("train", "source", "validation")}
    assert sizes == {"train": summary["train_size"], "source": 3 * summary["source_size"],
                     "validation": summary["validation_size"]}


def split_of(lengths: list[int]) -> EncodedSplit:
    width = max(lengths)
    input_ids = torch.zeros((len(lengths), width), dtype=torch.int32)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.arange(1, length + 1, dtype=torch.int32) + 100 * row
        input_ids[row, length - 1] = 2  # the separator
    return EncodedSplit(input_ids, torch.tensor(lengths), torch.arange(len(lengths)))


def test_training_batches_cover_every_row_once_and_are_seeded() -> None:
    split = split_of([3 + (i * 7) % 20 for i in range(53)])
    first = [b.indices.tolist() for b in iterate_batches(split, 8, 64, torch.Generator().manual_seed(0))]
    second = [b.indices.tolist() for b in iterate_batches(split, 8, 64, torch.Generator().manual_seed(0))]
    assert first == second
    assert sorted(i for indices in first for i in indices) == list(range(53))


def test_dynamic_padding_and_mask() -> None:
    split = split_of([3, 5, 4])
    (batch,) = list(iterate_batches(split, 3, 64))
    assert batch.inputs["input_ids"].shape == (3, 5)
    assert batch.inputs["attention_mask"].sum(dim=1).tolist() == [5, 4, 3]
    assert batch.labels.tolist() == batch.indices.tolist()


def test_truncation_keeps_the_separator() -> None:
    split = split_of([10, 4])
    (batch,) = list(iterate_batches(split, 2, 6))
    row = batch.indices.tolist().index(0)
    assert batch.inputs["input_ids"].shape[1] == 6
    assert batch.inputs["input_ids"][row].tolist() == [1, 2, 3, 4, 5, 2]
    assert batch.inputs["attention_mask"][row].tolist() == [1] * 6


def test_image_folder_and_table_inputs(tmp_path: Path) -> None:
    import pandas as pd

    train = write_image_folder(tmp_path / "train", per_class=6, seed=0)
    params = PrepareParams(validation_fraction=0.34, min_examples_per_class=3)
    data = prepare_target_data(train, None, params, seed=0)
    assert data.labels == ["blue", "green", "red"] and data.summary["modality"] == "image"
    table = pd.DataFrame({"image": [str(Path(p).relative_to(tmp_path)) for p in data.train["image"].map(
        lambda p: str(Path(p).resolve()))], "label": data.train["label"]})
    table.to_csv(tmp_path / "images.csv", index=False)
    from_table = prepare_target_data(tmp_path / "images.csv", None, PrepareParams(
        label_column="label", validation_fraction=0.34, min_examples_per_class=2, test_fraction=0.3), seed=0)
    assert from_table.summary["modality"] == "image"


def test_bad_images_are_named(tmp_path: Path) -> None:
    train = write_image_folder(tmp_path / "train", per_class=6, seed=0)
    params = PrepareParams(min_examples_per_class=3)
    (train / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: unreadable or corrupt image"):
        prepare_target_data(train, None, params, seed=0)
    (train / "red" / "broken.png").unlink()
    (train / "purple").mkdir()
    with pytest.raises(DataError, match=r"purple: empty class folder"):
        prepare_target_data(train, None, params, seed=0)
    (train / "purple").rmdir()
    with pytest.raises(DataError, match=r"smaller than prepare\.min_image_size=64"):
        prepare_target_data(train, None, PrepareParams(min_examples_per_class=3, min_image_size=64), seed=0)


def test_grey_images_stay_small_and_become_three_channels(tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.new("L", (28, 28), color=index * 100).save(path)
        paths.append(str(path))
    images = decode_images(paths, image_size=32)
    assert images.shape == (3, 1, 28, 28)  # native size kept on disk
    pixels = ImageBatcher(Preprocessing(32, (0.5,) * 3, (0.5,) * 3))(images)
    assert pixels.shape == (3, 3, 32, 32)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])


def test_augmentation_only_when_asked_and_seeded() -> None:
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    preprocessing = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)
    augmentation = build_augmentation(AugmentParams(crop_scale_min=0.5, horizontal_flip=0.5, color_jitter=0.3,
                                                    randaugment_ops=2), 32)
    assert augmentation is not None and build_augmentation(AugmentParams(), 32) is None
    plain = ImageBatcher(preprocessing)
    torch.testing.assert_close(plain(images), plain(images))
    augmented = ImageBatcher(preprocessing, augmentation)
    torch.manual_seed(0)
    first = augmented(images)
    torch.manual_seed(0)
    assert torch.equal(first, augmented(images))
    assert first.shape == (4, 3, 32, 32) and not torch.equal(first, plain(images))


def test_image_split_batches_cover_every_row() -> None:
    from crosstune.data.images import iterate_image_batches

    split = ImageSplit(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.arange(10))
    batcher = ImageBatcher(Preprocessing(8, (0.5,) * 3, (0.5,) * 3))
    seen = [b.indices.tolist() for b in iterate_image_batches(split, 4, batcher, torch.Generator().manual_seed(1))]
    assert sorted(i for batch in seen for i in batch) == list(range(10))


# Audio: reading, clip policy, prepare on folders and tables, named errors.


def test_audio_is_read_mono_resampled_and_fitted(tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    from crosstune.data.audio import decode_audio, fit_clip, read_audio, resample

    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.1)], axis=1).astype("float32")
    soundfile.write(tmp_path / "stereo.flac", stereo, 8000)
    samples, rate = read_audio(tmp_path / "stereo.flac")
    assert rate == 8000 and samples.shape == (800,) and np.allclose(samples, 0.2, atol=1e-4)
    assert resample(np.ones(8000, dtype="float32"), 8000, 16000).shape == (16000,)
    assert fit_clip(np.arange(10.0), 4, "center").tolist() == [3, 4, 5, 6]
    assert fit_clip(np.arange(10.0), 4, "start").tolist() == [0, 1, 2, 3]
    assert fit_clip(np.ones(2), 6, "center").tolist() == [0, 0, 1, 1, 0, 0]
    assert fit_clip(np.ones(2), 4, "start").tolist() == [1, 1, 0, 0]
    clips = decode_audio([str(tmp_path / "stereo.flac")], 16000, 2000, "start")
    assert clips.dtype == torch.int16 and clips.shape == (1, 2000)
    assert abs(int(clips[0, 800]) - round(0.2 * 32767)) < 200 and int(clips[0, -1]) == 0


def test_audio_folder_and_table_inputs(tmp_path: Path) -> None:
    import pandas as pd
    from conftest import write_audio_folder

    train = write_audio_folder(tmp_path / "train", per_class=6, seed=0)
    params = PrepareParams(validation_fraction=0.34, min_examples_per_class=3)
    data = prepare_target_data(train, None, params, seed=0)
    assert data.labels == ["high", "low", "mid"] and data.summary["modality"] == "audio"
    rows = pd.DataFrame({"path": [str(Path(p).resolve().relative_to(tmp_path)) for p in data.train["audio"]],
                         "who": data.train["label"]})
    rows.to_csv(tmp_path / "recordings.csv", index=False)
    from_table = prepare_target_data(tmp_path / "recordings.csv", None, PrepareParams(
        label_column="who", audio_column="path", validation_fraction=0.34, min_examples_per_class=2,
        test_fraction=0.3), seed=0)
    assert from_table.summary["modality"] == "audio" and len(from_table.test) + len(from_table.train) + len(
        from_table.validation) == len(rows)


def test_bad_audio_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    import numpy as np
    import soundfile
    from conftest import write_audio_folder

    from crosstune.data.splitting import write_prepared

    train = write_audio_folder(tmp_path / "train", per_class=6, seed=0)
    params = PrepareParams(min_examples_per_class=3)
    cases = {
        "corrupt.wav": (lambda path: path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk"), r"unreadable or corrupt audio"),
        "empty.wav": (lambda path: soundfile.write(path, np.zeros(0, dtype="float32"), 8000), r"empty recording"),
        "silent.wav": (lambda path: soundfile.write(path, np.zeros(4000, dtype="float32"), 8000), r"silent"),
        "short.wav": (lambda path: soundfile.write(path, np.full(80, 0.3, dtype="float32"), 8000),
                      r"0\.010 s is shorter than prepare\.min_audio_seconds=0\.05"),
    }
    out = tmp_path / "prepared"
    for name, (write, message) in cases.items():
        write(train / "low" / name)
        with pytest.raises(DataError, match=rf"low/{name}: {message}"):
            write_prepared(prepare_target_data(train, None, params, seed=0), out, params)
        (train / "low" / name).unlink()
        assert not out.exists()
    (train / "none").mkdir()
    (train / "none" / "notes.wav.txt").write_text("not audio")
    with pytest.raises(DataError, match=r"none: empty class folder"):
        prepare_target_data(train, None, params, seed=0)


def test_clip_length_is_the_longest_training_clip_capped_by_the_backbone(tmp_path: Path) -> None:
    from conftest import write_audio_folder

    from crosstune.data.audio import clip_length

    paths = [str(path) for path in sorted(write_audio_folder(tmp_path, 3, seed=0, seconds=0.4).rglob("*.wav"))]
    assert 0.3 * 8000 <= clip_length(paths, 8000, 0.0, 0.0) <= 0.4 * 8000
    assert clip_length(paths, 16000, 1.5, 0.0) == 24000
    assert clip_length(paths, 16000, 45.0, 30.0) == 30 * 16000
