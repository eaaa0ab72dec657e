"""``prepare.task: token_classification``: one tag per word, entities as spans (named-entity recognition).

Inputs are tagged sentences (:mod:`crosstune.data.tagging`: CoNLL/IOB files or JSON Lines of character spans),
prepared as the sentence's text, its words' offsets and one IOB2 tag per word. The model reads every token's
state (no pooling); a word's tag is predicted at its first sub-token and sentences longer than the window are
cut into overlapping windows (:mod:`crosstune.data.token_alignment`). The loss is token cross-entropy; the
metrics are seqeval's entity-level precision, recall and F1 (exact span and type, strict IOB2: the CoNLL-2000
``conlleval`` count, Tjong Kim Sang & Buchholz 2000, https://aclanthology.org/W00-0726/) and token accuracy;
the headline is entity micro-F1. The probe is logistic regression on the words' frozen first-sub-token states;
the export is ``AutoModelForTokenClassification``.

Encoded targets are (W, 2): each word's tag index and its sentence, sentences in order, so every stage that
passes targets along (validation, probe, baselines) can group words back into sentences.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from crosstune.errors import ConfigError, DataError
from crosstune.tasks.base import Task
from crosstune.tasks.classification import Classification

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from crosstune.data.tagging import TaggedSentence

_PER_WORD = Classification()  # the per-word class maths (weights, closed-form layer, LogME) the task delegates to


def sentence_tags(targets: Sequence[Sequence[int]], tags: Sequence[int], labels: Sequence[str]) -> tuple[list, list]:
    """Gold and predicted tag names grouped by sentence: ``targets`` rows are ``(tag, sentence)``, ``tags``
    the predicted tag index of each row."""
    gold: dict[int, list[str]] = {}
    predicted: dict[int, list[str]] = {}
    for (tag, sentence), guess in zip(targets, tags):
        gold.setdefault(int(sentence), []).append(labels[int(tag)])
        predicted.setdefault(int(sentence), []).append(labels[int(guess)])
    order = sorted(gold)
    return [gold[key] for key in order], [predicted[key] for key in order]


def entity_metrics(gold: list[list[str]], predicted: list[list[str]], per_class: bool = False) -> dict[str, float]:
    """Entity micro precision, recall and F1 (exact span and type, strict IOB2) and token accuracy; per entity
    type on request (``{type}_precision``, ..., ``{type}_support``)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    options = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    flat_gold = [tag for sentence in gold for tag in sentence]
    flat_predicted = [tag for sentence in predicted for tag in sentence]
    correct = sum(a == b for a, b in zip(flat_gold, flat_predicted))
    result = {"entity_f1": float(f1_score(gold, predicted, average="micro", **options)),
              "entity_precision": float(precision_score(gold, predicted, average="micro", **options)),
              "entity_recall": float(recall_score(gold, predicted, average="micro", **options)),
              "token_accuracy": correct / max(len(flat_gold), 1)}
    if per_class:
        report = classification_report(gold, predicted, output_dict=True, **options)
        for kind, row in sorted(report.items()):
            if kind.endswith(" avg"):
                continue
            result.update({f"{kind}_precision": float(row["precision"]), f"{kind}_recall": float(row["recall"]),
                           f"{kind}_f1": float(row["f1-score"]), f"{kind}_support": int(row["support"])})
    return result


class TokenClassification(Task):
    """One IOB2 tag per word: disease or gene mentions in abstracts, people and places in news."""

    name = "token_classification"
    own_params = ("prepare.tag_scheme",)
    output = "one tag per word (entities as spans)"
    modalities = ("text",)
    losses = ("token_cross_entropy",)
    metrics = {"entity_f1": True, "entity_precision": True, "entity_recall": True, "token_accuracy": True,
               "loss": False}
    headline = "entity_f1"
    summary_metrics = ("entity_f1", "token_accuracy")
    baseline_metrics = ("entity_f1", "entity_precision", "entity_recall")
    card_metrics = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")
    label_dtype = str
    hf_auto_class = "AutoModelForTokenClassification"
    hf_problem_type = ""
    pooling = "tokens"
    reads_files = True
    cleans_texts = False  # entities are character offsets into the text as given
    prediction_shape = '[{"entities": [{"start": ..., "end": ..., "label": ..., "text": ..., "score": ...}]}]'
    prepared_columns = ("words",)

    # --- reading -------------------------------------------------------------------------------------------

    def read_examples(self, path: Path, params: Any) -> "pd.DataFrame":
        """A CoNLL/IOB file or JSON Lines of spans as a prepared frame: ``text``, ``label`` (the words' IOB2 tags,
        space-separated) and ``words`` (their character offsets, JSON)."""
        import pandas as pd

        from crosstune.data.tagging import read_tagged

        if path.is_dir():
            raise DataError(f"{path}: a folder; {self.name} reads one CoNLL/IOB file or JSON Lines file of spans; "
                            f"point data.train / data.test at that file.")
        sentences = read_tagged(path, params.tag_scheme)
        return pd.DataFrame({"text": [sentence.text for sentence in sentences],
                             "label": [" ".join(sentence.tags) for sentence in sentences],
                             "words": [sentence.words_json() for sentence in sentences]})

    def read_labels(self, values: "pd.Series", path: Path) -> "pd.Series":
        return values.astype(str)

    def check_training_labels(self, train: "pd.DataFrame", path: Path, minimum: int) -> None:
        """The training sentences must hold entities, ``minimum`` of each type at least."""
        self.check_counts(self.label_counts(train), path, minimum, "entities", "type(s)",
                          "tag some entities (every tag is O)")

    def hold_out(self, frame: "pd.DataFrame", fraction: float, seed: int) -> tuple["pd.DataFrame", "pd.DataFrame"]:
        """The file's last ``fraction`` of sentences, in order. Tagged corpora keep a document's sentences
        together, and a random sentence split puts sentences of one abstract on both sides, so validation rewards
        memorising that document's entities: on NCBI-disease the CRF baseline validated at entity F1 0.875 on a
        random 10% and a fine-tuned MiniLM at 0.859, which test (other abstracts) ranks the other way round."""
        count = min(max(1, round(len(frame) * fraction)), len(frame) - 1)
        return frame.iloc[: len(frame) - count], frame.iloc[len(frame) - count :]

    def label_names(self, train: "pd.DataFrame") -> list[str]:
        """O and B-/I- of every entity type in training, sorted."""
        kinds = {tag[2:] for tags in train["label"] for tag in tags.split() if tag != "O"}
        if "entity" in kinds:  # its per-type scores would overwrite entity_f1 and the other headline keys
            raise DataError("an entity type is named 'entity', the name the overall entity scores use; rename that "
                            "type in the training and test files.")
        return sorted(["O", *(f"{prefix}-{kind}" for kind in kinds for prefix in "BI")])

    def check_test_labels(self, test: "pd.DataFrame", labels: list[str], path: Path) -> None:
        """Entity types the training sentences never show cannot be predicted."""
        known = set(labels)
        for row, tags in enumerate(test["label"], start=1):
            unknown = sorted(set(tags.split()) - known)
            if unknown:
                raise DataError(f"{path}: sentence {row} has tag(s) {unknown} of an entity type the training file "
                                f"never shows (known tags: {labels}); tag training sentences with that type or "
                                f"drop it.")

    def label_counts(self, frame: "pd.DataFrame") -> dict[str, int]:
        """Entities per type."""
        from crosstune.data.tagging import spans_of_tags

        counts: dict[str, int] = {}
        for tags in frame["label"]:
            for _, _, kind in spans_of_tags(tags.split()):
                counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    # --- encoding and training ------------------------------------------------------------------------------

    def encode_labels(self, labels: "pd.Series", names: Sequence[str]) -> "torch.Tensor":
        """(W, 2): each word's tag index and its sentence's position in the table."""
        import torch

        index = {label: position for position, label in enumerate(names)}
        rows = [(index[tag], sentence) for sentence, tags in enumerate(labels) for tag in str(tags).split()]
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)

    def encode_texts(self, tokenizer: Any, frame: "pd.DataFrame", targets: "torch.Tensor",
                     max_length: int) -> tuple[Any, dict[str, int]]:
        """Sentences as windows of sub-tokens, each word's tag on its first sub-token; counts the sentences cut
        into more than one window (``split_sentences``) and the words (``words``)."""
        from crosstune.data.token_alignment import encode_tagged

        sentences = [self._sentence(text, words).tokens() for text, words in zip(frame["text"], frame["words"])]
        encoded, split = encode_tagged(_fast(tokenizer), sentences, targets, max_length)
        return encoded, {"split_sentences": split, "words": int(targets.shape[0])}

    def decode_texts(self, tokenizer: Any, texts: list[str], config: dict[str, Any], max_length: int) -> Any:
        """New texts split into words (:data:`crosstune.data.tagging.WORD_PATTERN`), in windows; the split keeps
        the sentences so predictions go back to character spans of the texts as given (not cleaned: offsets
        must point into them)."""
        from crosstune.data.tagging import TaggedSentence, split_words
        from crosstune.data.token_alignment import encode_tagged

        sentences = []
        for row, text in enumerate(texts, start=1):
            words = split_words(text)
            if not words:
                raise DataError(f"input {row}: {text!r} has no words to tag; remove it.")
            sentences.append(TaggedSentence(text, tuple(words), ("O",) * len(words)))
        encoded, _ = encode_tagged(_fast(tokenizer), [sentence.tokens() for sentence in sentences], None, max_length)
        encoded.sentences = sentences
        return encoded

    def loss_targets(self, targets: "torch.Tensor") -> "torch.Tensor":
        return targets[:, 0]

    def baseline_examples(self, frame: "pd.DataFrame") -> tuple[list[Any], list[Any]]:
        """Word lists and their tag lists."""
        sentences = [self._sentence(text, words) for text, words in zip(frame["text"], frame["words"])]
        return [sentence.tokens() for sentence in sentences], [tags.split() for tags in frame["label"]]

    def labelled(self, targets: "np.ndarray") -> "np.ndarray":
        return targets[:, 0] >= 0

    def num_outputs(self, labels: Sequence[str]) -> int:
        return len(labels)

    def build_loss(self, name: str, class_weights: "torch.Tensor | None", label_smoothing: float) -> "torch.nn.Module":
        """Token cross-entropy with class weights and label smoothing, built as classification builds its loss."""
        return Classification.build_loss(self, name, class_weights, label_smoothing)  # type: ignore[arg-type]

    def class_weights(self, setting: Any, targets: "torch.Tensor", num_labels: int) -> "torch.Tensor | None":
        """``finetune.class_weights`` over the words' tags (``balanced`` raises the rare B-/I- tags against O)."""
        return _PER_WORD.class_weights(setting, targets[:, 0], num_labels)

    # --- outputs --------------------------------------------------------------------------------------------

    def predictions(self, outputs: "torch.Tensor") -> tuple[list[Any], list[float]]:
        """Each word's tag index and its softmax probability."""
        confidence, predicted = outputs.softmax(dim=-1).max(dim=-1)
        return predicted.tolist(), confidence.tolist()

    def score(self, targets: Sequence[Any], outputs: "torch.Tensor", labels: Sequence[str],
              per_class: bool = False) -> dict[str, float]:
        predicted, _ = self.predictions(outputs)
        return entity_metrics(*sentence_tags(targets, predicted, labels), per_class=per_class)

    def score_baseline(self, targets: Sequence[Any], predicted: Sequence[Any],
                       labels: Sequence[str]) -> dict[str, float]:
        """``predicted``: a tag list per sentence, in the targets' sentence order."""
        gold, _ = sentence_tags(targets, [0] * len(targets), labels)
        return entity_metrics(gold, [list(tags) for tags in predicted])

    def prediction_records(self, outputs: "torch.Tensor", split: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
        """Per input text: ``{"entities": [{"start", "end", "label", "text", "score"}]}`` (character offsets)."""
        from crosstune.data.tagging import entity_records

        predicted, confidence = self.predictions(outputs)
        records, row = [], 0
        for sentence in split.sentences:
            count = len(sentence.words)
            tags = [labels[index] for index in predicted[row : row + count]]
            records.append({"entities": entity_records(sentence, tags, confidence[row : row + count])})
            row += count
        return records

    def prediction_columns(self, outputs: "torch.Tensor", targets: "torch.Tensor",
                           labels: Sequence[str]) -> dict[str, list[Any]]:
        """The predicted tags per test sentence, and its entities found, missed and spurious."""
        from crosstune.data.tagging import spans_of_tags

        predicted, _ = self.predictions(outputs)
        gold, guessed = sentence_tags(targets.tolist(), predicted, labels)
        found, missed, spurious = [], [], []
        for gold_tags, guessed_tags in zip(gold, guessed):
            expected, given = set(spans_of_tags(gold_tags)), set(spans_of_tags(guessed_tags))
            found.append(len(expected & given))
            missed.append(len(expected - given))
            spurious.append(len(given - expected))
        return {"predicted": [" ".join(tags) for tags in guessed], "entities_found": found,
                "entities_missed": missed, "entities_spurious": spurious}

    def examples_figure(self, path: str | Path, table: "pd.DataFrame", inputs: dict[str, Any]) -> None:
        """Test sentences with mistakes, gold and predicted entities side by side."""
        from crosstune.reporting.tagged_sentences import tagged_sentences_figure

        sentences = [self._sentence(text, words) for text, words in zip(table["text"], table["words"])]
        tagged_sentences_figure(path, sentences, [tags.split() for tags in table["predicted"]],
                                [tags.split() for tags in table["label"]])

    # --- probe, selection, export ---------------------------------------------------------------------------

    def fit_output_layer(self, inputs: "np.ndarray", targets: "np.ndarray", num_outputs: int, strength: float,
                         class_weights: "torch.Tensor | None", seed: int) -> tuple["np.ndarray", "np.ndarray"]:
        """Multinomial logistic regression per word on its frozen first-sub-token state (the classification
        probe's fit, :meth:`crosstune.tasks.classification.Classification.fit_output_layer`)."""
        return _PER_WORD.fit_output_layer(inputs, targets[:, 0], num_outputs, strength, class_weights, seed)

    def selection_examples(self, frame: "pd.DataFrame", rows: Sequence[int], column: str) -> tuple[list[Any], Any]:
        """Word lists of the sampled sentences (the text backbones' features are then one row per word, its first
        sub-token's state: :func:`crosstune.selection.candidates.text_block_features`) and every word's tag."""
        import numpy as np

        chosen = frame.iloc[list(rows)]
        words, tags = self.baseline_examples(chosen)
        from crosstune.data.token_alignment import WordLists

        return WordLists(tuple(sentence) for sentence in words), np.asarray([tag for row in tags for tag in row])

    def report_sections(self, test: dict[str, Any], predictions: Path) -> list[str] | None:
        """Per-type entity scores and the test sentences with gold and predicted entities side by side."""
        from crosstune.reporting.tagged_sentences import tagged_mistakes_html
        from crosstune.reporting.wording import MISTAKES_SHOWN, per_class_html

        return [per_class_html(test), tagged_mistakes_html(predictions, MISTAKES_SHOWN)]

    def transferability(self, score: str) -> Any:
        """The classification scores (LogME, kNN, ...) on one row per word: its tag."""
        return _PER_WORD.transferability(score)

    def block_transferability(self) -> Any:
        return _PER_WORD.block_transferability()

    def hf_config(self, config: Any, labels: Sequence[str]) -> None:
        """The tag maps (id2label, label2id); token classification has no ``problem_type``."""
        Classification.hf_config(self, config, labels)  # type: ignore[arg-type]
        config.problem_type = None

    @staticmethod
    def _sentence(text: str, words: str) -> "TaggedSentence":
        from crosstune.data.tagging import TaggedSentence

        return TaggedSentence.from_prepared(text, words)


def _fast(tokenizer: Any) -> Any:
    """The tokenizer, which must be a fast one: word alignment reads its ``word_ids``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"backbone: {type(tokenizer).__name__} is a slow tokenizer, which cannot align sub-tokens "
                          f"with words; pick a backbone whose directory has a tokenizer.json.")
    return tokenizer
