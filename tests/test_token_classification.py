"""prepare.task: token_classification: reading tagged files, word alignment and windows, per-token training on
the cache, entity scores, baselines, and the stock Hugging Face pipeline on an export."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_params

from crosstune.config import FinetuneParams, PrepareParams
from crosstune.data.tagging import (
    read_conll,
    read_spans,
    spans_of_tags,
    split_words,
    tags_of_spans,
)
from crosstune.data.token_alignment import windows, word_pieces
from crosstune.errors import DataError
from crosstune.tasks.registry import TASKS

NCBI = REPO_ROOT / "data" / "ner" / "ncbi_disease"
TASK = TASKS.get("token_classification")


def write_ncbi_subset(directory: Path, train: int = 150, test: int = 40) -> dict[str, Path]:
    """The first sentences of the committed NCBI disease corpus, as CoNLL files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, count in (("train", train), ("test", test)):
        blocks = (NCBI / f"{name}.tsv").read_text(encoding="utf-8").split("\n\n")[:count]
        paths[name] = directory / f"{name}.tsv"
        paths[name].write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return paths


NER_PARAMS = {
    "prepare": {"task": "token_classification", "validation_fraction": 0.2},
    "backbone": {"max_length": 24},  # short windows: many sentences are cut in several
    "finetune": {"loss": "token_cross_entropy", "select_metric": "entity_f1", "class_weights": "none",
                 "max_length": 24, "epochs": 2},
    "evaluate": {"baselines": ["crf", "dictionary"]},
}


# --- reading ----------------------------------------------------------------------------------------------------


def test_conll_reads_docstart_blank_lines_and_space_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n   \nPeter NNP B-PER\nBlackburn NNP I-PER\n"
                    "\n\n", encoding="utf-8")
    sentences = read_conll(path)
    assert [sentence.tags for sentence in sentences] == [("B-ORG", "O"), ("B-PER", "I-PER")]
    assert sentences[1].text == "Peter Blackburn" and sentences[1].tokens() == ["Peter", "Blackburn"]
    assert sentences[1].line == 6


def test_iob1_and_bioes_are_rewritten_as_iob2(tmp_path: Path) -> None:
    iob1 = tmp_path / "iob1.txt"
    iob1.write_text("a\tI-X\nb\tI-X\nc\tB-X\nd\tO\ne\tI-Y\n", encoding="utf-8")
    assert read_conll(iob1, "iob1")[0].tags == ("B-X", "I-X", "B-X", "O", "B-Y")
    bioes = tmp_path / "bioes.txt"
    bioes.write_text("a\tB-X\nb\tI-X\nc\tE-X\nd\tS-Y\ne\tO\n", encoding="utf-8")
    assert read_conll(bioes)[0].tags == ("B-X", "I-X", "I-X", "B-Y", "O")  # auto: E-/S- tags mean BIOES


@pytest.mark.parametrize(("content", "scheme", "expected"), [
    ("a\tO\nb\tI-Disease\n", "auto", r"a.txt:2: I-Disease follows O without a B-Disease.*tag_scheme: iob1"),
    ("a\tB-X\nb\tX-Y\n", "auto", r"a.txt:2: tag 'X-Y' is not in the IOB2 scheme"),
    ("a\tB-X\nb\tE-X\n", "iob2", r"a.txt:2: tag 'E-X' is not in the IOB2 scheme"),
    ("a\tB-X\nlonely\n", "auto", r"a.txt:2: 'lonely' has one column; each line needs a token and its tag"),
    ("\n\n", "auto", r"a.txt: no tagged sentences"),
])
def test_bad_conll_names_the_file_line_and_fix(tmp_path: Path, content: str, scheme: str, expected: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        read_conll(path, scheme)


def test_spans_become_tags_on_word_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    records = [{"text": "Familial breast cancer, and ataxia.", "entities": [
                   {"start": 9, "end": 22, "label": "Disease"}, {"start": 28, "end": 34, "label": "Disease"}]},
               {"text": "No entity here", "label": []},
               {"text": "BRCA1 (doccano)", "label": [[0, 5, "Gene"]]}]
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
    first, second, third = read_spans(path)
    assert first.tokens() == ["Familial", "breast", "cancer", ",", "and", "ataxia", "."]
    assert first.tags == ("O", "B-Disease", "I-Disease", "O", "O", "B-Disease", "O")
    assert second.tags == ("O", "O", "O") and third.tags[0] == "B-Gene"


@pytest.mark.parametrize(("record", "expected"), [
    ({"text": "abc def", "entities": [{"start": 4, "end": 9, "label": "X"}]}, r"a.jsonl:1: .*out of range"),
    ({"text": "abc def ghi", "entities": [{"start": 0, "end": 7, "label": "X"}, {"start": 4, "end": 11,
                                                                                "label": "Y"}]},
     r"a.jsonl:1: entity Y \[4, 11\) overlaps"),
    ({"text": "abcdef", "entities": [{"start": 0, "end": 3, "label": "X"}]}, r"does not fall on word boundaries"),
    ({"text": "   ", "entities": []}, r"a.jsonl:1: empty text"),
    ({"text": "abc", "entities": [{"start": 0}]}, r"a.jsonl:1: entity .* is not"),
])
def test_bad_spans_name_the_file_line_and_fix(tmp_path: Path, record: dict, expected: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        read_spans(path)


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok", "entities": []}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"a.jsonl:2: not valid JSON"):
        read_spans(path)


def test_a_bad_file_writes_nothing(tmp_path: Path) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    paths = write_ncbi_subset(tmp_path / "raw", train=30, test=10)
    paths["test"].write_text("a\tO\nb\tI-Disease\n", encoding="utf-8")
    params = write_params(tmp_path / "params.yaml", NER_PARAMS)
    with pytest.raises(DataError, match=r"test.tsv:2: I-Disease follows O"):
        prepare_stage(str(paths["train"]), str(paths["test"]), str(tmp_path / "prepared"), str(params))
    assert not (tmp_path / "prepared").exists()


def test_spans_to_tags_and_back_is_exact() -> None:
    rng = random.Random(0)
    for _ in range(200):
        length = rng.randint(1, 30)
        spans, position = [], 0
        while position < length:
            position += rng.randint(0, 3)
            size = rng.randint(1, 4)
            if position + size <= length:
                spans.append((position, position + size, rng.choice(["A", "B"])))
            position += size
        assert spans_of_tags(tags_of_spans(length, spans)) == spans


# --- alignment and windows --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import TEXTS

    from crosstune.backbones.text import load_backbone
    from crosstune.config import BackboneParams, TinyBertParams

    words = [sentence.text for sentence in read_conll(NCBI / "test.tsv")[:60]]
    return load_backbone(BackboneParams(name="tiny-bert", tiny=TinyBertParams(vocab_size=120)), TEXTS + words,
                         0).tokenizer


def test_words_to_sub_tokens_and_back(tokenizer) -> None:
    for sentence in read_conll(NCBI / "test.tsv")[:50]:
        pieces, firsts = word_pieces(tokenizer, sentence.tokens())
        assert len(firsts) == len(sentence.words) and firsts == sorted(firsts) and firsts[0] == 0
        for index, first in enumerate(firsts):  # a word's pieces read back as the word (an uncased vocabulary)
            stop = firsts[index + 1] if index + 1 < len(firsts) else len(pieces)
            text = tokenizer.decode(pieces[first:stop]).replace(" ", "").replace("##", "")
            assert text == sentence.tokens()[index].lower() or "[UNK]" in text


def test_windows_cover_every_word_once() -> None:
    rng = random.Random(1)
    for _ in range(300):
        words = rng.randint(1, 60)
        firsts = sorted(rng.sample(range(words * 3), words))
        pieces = firsts[-1] + rng.randint(1, 3)
        body = rng.randint(2, 20)
        cut = windows(firsts, pieces, body)
        owned = [word for window in cut for word, _ in window.words]
        assert sorted(owned) == list(range(words))
        for window in cut:
            assert window.stop - window.start <= body and window.start >= 0 and window.stop <= max(pieces, body)
            assert all(window.start <= first < window.stop for _, first in window.words)
        assert (len(cut) > 1) == (pieces > body)


def test_long_sentences_are_split_and_every_word_keeps_its_tag(tokenizer) -> None:
    sentences = read_conll(NCBI / "test.tsv")[:40]
    frame = TASK.read_examples(NCBI / "test.tsv", PrepareParams(task="token_classification")).iloc[:40]
    labels = ["B-Disease", "I-Disease", "O"]
    targets = TASK.encode_labels(frame["label"], labels)
    split, counts = TASK.encode_texts(tokenizer, frame, targets, 24)
    assert counts["split_sentences"] > 5 and counts["words"] == sum(len(s.words) for s in sentences)
    assert int(split.lengths.max()) <= 24
    placed = split.positions[split.positions >= 0]
    assert sorted(placed.tolist()) == list(range(len(targets)))  # every word predicted exactly once


# --- training, scores, baselines ---------------------------------------------------------------------------------


@pytest.fixture
def ner_attached(tmp_path: Path) -> dict[str, Path]:
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    raw = write_ncbi_subset(tmp_path / "raw", train=80, test=20)
    params = write_params(tmp_path / "params.yaml", NER_PARAMS)
    paths = {"prepared": tmp_path / "prepared", "backbone": tmp_path / "backbone", "encoded": tmp_path / "encoded",
             "initial": tmp_path / "initial", "params": params}
    prepare_stage(str(raw["train"]), str(raw["test"]), str(paths["prepared"]), str(params))
    backbone_stage(str(paths["prepared"]), str(paths["backbone"]), str(paths["encoded"]),
                   str(tmp_path / "backbone.json"), str(tmp_path / "selection.json"), str(tmp_path / "selection.csv"),
                   str(params))
    attach_head_stage(str(paths["backbone"]), str(paths["prepared"]), str(paths["initial"]),
                      str(tmp_path / "freeze.json"), str(params))
    return paths


@pytest.mark.parametrize("depth", [1, "all"])
def test_cached_per_token_training_matches_uncached(ner_attached: dict[str, Path], tmp_path: Path, depth: object,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import test_prefix_cache

    def finetune(epochs: int = 2):
        return FinetuneParams(lr=0.003, epochs=epochs, batch_size=8, max_length=24, class_weights="none",
                              loss="token_cross_entropy", select_metric="entity_f1", warmup_ratio=0.1, log_every=2,
                              mixed_precision="off")

    monkeypatch.setattr(test_prefix_cache, "_finetune", finetune)
    (plain, plain_result), (cached, cached_result) = test_prefix_cache._train_both(
        ner_attached["initial"], ner_attached["encoded"], depth, tmp_path)
    for (name, expected), actual in zip(plain.state_dict().items(), cached.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4, msg=name)
    assert plain_result.best_metrics["token_accuracy"] == pytest.approx(cached_result.best_metrics["token_accuracy"])


def test_entity_scores_count_exact_spans() -> None:
    labels = ["B-D", "I-D", "O"]
    gold = [["B-D", "I-D", "O", "B-D"], ["O", "B-D"]]
    guess = [["B-D", "I-D", "O", "O"], ["B-D", "I-D"]]  # 1 exact hit, 2 missed (one cut short), 1 spurious
    targets = [(labels.index(tag), sentence) for sentence, row in enumerate(gold) for tag in row]
    outputs = torch.nn.functional.one_hot(torch.tensor([labels.index(tag) for row in guess for tag in row]), 3)
    scores = TASK.score(targets, outputs.float(), labels, per_class=True)
    assert scores["entity_precision"] == pytest.approx(1 / 2) and scores["entity_recall"] == pytest.approx(1 / 3)
    assert scores["entity_f1"] == pytest.approx(0.4) and scores["token_accuracy"] == pytest.approx(3 / 6)
    assert scores["D_support"] == 3
    columns = TASK.prediction_columns(outputs.float(), torch.tensor(targets), labels)
    assert columns["entities_found"] == [1, 0] and columns["entities_missed"] == [1, 1]
    assert columns["entities_spurious"] == [0, 1]


def test_baselines_learn_disease_mentions() -> None:
    from crosstune.evaluation.baselines import run_baseline

    frame = TASK.read_examples(NCBI / "train.tsv", PrepareParams(task="token_classification")).iloc[:400]
    test = TASK.read_examples(NCBI / "test.tsv", PrepareParams(task="token_classification")).iloc[:100]
    words, tags = TASK.baseline_examples(frame)
    test_words, test_tags = TASK.baseline_examples(test)
    labels = ["B-Disease", "I-Disease", "O"]
    targets = TASK.encode_labels(test["label"], labels).tolist()
    for name, floor in (("crf", 0.2), ("dictionary", 0.05)):  # 400 training sentences: CRF 0.28
        predicted = run_baseline(name, TASK.name, words, tags, test_words, 0)
        assert [len(row) for row in predicted] == [len(row) for row in test_tags]
        assert TASK.score_baseline(targets, predicted, labels)["entity_f1"] > floor, name


def test_predictions_go_back_to_character_spans(ner_attached: dict[str, Path]) -> None:
    """A text's entities as character offsets of the text as given, one record per input."""
    from crosstune.data.tagging import TaggedSentence, entity_records

    sentence = TaggedSentence("Type 2 diabetes, or gout.", tuple(split_words("Type 2 diabetes, or gout.")), ())
    tags = ["B-D", "I-D", "I-D", "O", "O", "B-D", "O"]
    records = entity_records(sentence, tags, [0.9, 0.8, 0.7, 1, 1, 0.6, 1])
    assert [(r["start"], r["end"], r["text"]) for r in records] == [(0, 15, "Type 2 diabetes"), (20, 24, "gout")]
    assert records[0]["score"] == pytest.approx(0.8)


def test_token_pooling_is_the_tasks_not_a_users_choice() -> None:
    from crosstune.config import HeadParams
    from crosstune.errors import ConfigError
    from crosstune.heads.registry import check_head_params

    with pytest.raises(ConfigError, match=r"head\.pooling: unknown pooling 'tokens'; valid pooling names: "
                                          r"\['cls', 'mean'\]"):
        check_head_params(HeadParams(type="linear", pooling="tokens"))


def test_validation_is_the_files_last_sentences() -> None:
    """Sentences of one abstract follow each other: a contiguous hold-out keeps documents on one side."""
    frame = TASK.read_examples(NCBI / "devel.tsv", PrepareParams(task="token_classification"))
    kept, held_out = TASK.hold_out(frame, 0.1, seed=3)
    assert len(held_out) == round(len(frame) * 0.1) and list(held_out.index) == list(range(len(kept), len(frame)))
    assert TASK.hold_out(frame, 0.1, seed=4)[1].equals(held_out)


@pytest.mark.parametrize("setting", ["lora", "bf16_layer_decay"])
def test_per_token_training_with_lora_bf16_and_layer_wise_rates(ner_attached: dict[str, Path], setting: str) -> None:
    """The shared loop's options on a per-token model: LoRA adapters (peft) on the tiny encoder, or bf16 autocast
    with layer-wise learning rates; it trains (loss falls) and scores entities."""
    import dataclasses

    from conftest import fit

    from crosstune.config import FreezeParams
    from crosstune.data.batching import load_any_split
    from crosstune.freezing.policy import apply_policy
    from crosstune.transfer_model.storage import load_transfer_model

    model, _ = load_transfer_model(ner_attached["initial"])
    policy = FreezeParams(lora_r=4) if setting == "lora" else FreezeParams(depth=0)
    apply_policy(model, policy, 0)
    params = FinetuneParams(lr=0.003, epochs=2, batch_size=8, max_length=24, class_weights="balanced",
                            loss="token_cross_entropy", select_metric="entity_f1", log_every=1)
    if setting != "lora":
        params = dataclasses.replace(params, mixed_precision="bf16", layer_decay=0.8)
    before = {name: (tensor.detach().clone(), tensor.requires_grad) for name, tensor in model.named_parameters()}
    result = fit(model, load_any_split(ner_attached["encoded"] / "train.safetensors"),
                 load_any_split(ner_attached["encoded"] / "validation.safetensors"), params)
    assert all(math.isfinite(row["loss"]) and 0 <= row["entity_f1"] <= 1 for row in result.history)
    moved = {name for name, tensor in model.named_parameters() if not torch.equal(tensor, before[name][0])}
    trainable = {name for name, (_, grad) in before.items() if grad}
    assert moved and moved <= trainable  # what is frozen stays as it was
    if setting == "lora":
        assert all("lora_" in name or name.startswith("head.") for name in trainable)
    else:
        assert result.precision == "bfloat16"


def test_an_entity_type_named_like_the_overall_scores_is_refused() -> None:
    import pandas as pd

    with pytest.raises(DataError, match=r"an entity type is named 'entity'"):
        TASK.label_names(pd.DataFrame({"label": ["B-entity O", "O"]}))


def test_the_report_shows_per_type_scores_and_the_tagged_mistakes(tmp_path: Path) -> None:
    """The task's own report sections: the per-type table and the sentences whose entities were not all found,
    gold beside predicted with missed and spurious entities marked; a missing predictions table adds no section."""
    import pandas as pd

    text = "Type 2 diabetes, or gout."
    words = json.dumps([list(span) for span in split_words(text)])
    pd.DataFrame({"text": [text, text], "words": [words, words],
                  "label": ["B-D I-D I-D O O B-D O", "B-D I-D I-D O O B-D O"],
                  "predicted": ["B-D I-D I-D O O O O", "B-D I-D I-D O O B-D O"],
                  "entities_missed": [1, 0], "entities_spurious": [0, 0]}).to_csv(tmp_path / "predictions.csv",
                                                                                  index=False)
    test = {"D_precision": 1.0, "D_recall": 0.75, "D_f1": 0.857, "D_support": 4}
    per_type, mistakes = TASKS.get("token_classification").report_sections(test, tmp_path / "predictions.csv")
    assert "<h2>Per class</h2>" in per_type and "<td>D</td>" in per_type
    assert "1 of the 1 test sentences" in mistakes and 'title="D: missed">gout</mark>' in mistakes
    assert TASKS.get("token_classification").report_sections(test, tmp_path / "absent.csv")[1] == ""
