"""Words to sub-tokens and back, and sentences longer than the model's window.

A tokenizer cuts a word into sub-tokens; the word's tag goes on its first sub-token and the others are
ignored by the loss (the alignment of BERT's NER recipe, Devlin et al. 2019, https://arxiv.org/abs/1810.04805,
section 5.3), and the first sub-token's prediction is the word's. A sentence longer than ``max_length``
sub-tokens is not truncated: it is cut into windows of ``max_length`` (special tokens included) that overlap
by half, and each word is predicted by the window whose centre lies nearest its first sub-token (the most
context on both sides), so every word is predicted exactly once and no entity is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from crosstune.data.text_encoding import EncodedSplit


@dataclass(frozen=True)
class Window:
    """Sub-tokens ``start:stop`` of a sentence and the words (by index in the sentence) this window predicts,
    with each one's first sub-token."""

    start: int
    stop: int
    words: tuple[tuple[int, int], ...]  # (word index, first sub-token index in the sentence)


def word_pieces(tokenizer: "PreTrainedTokenizerBase", words: Sequence[str]) -> tuple[list[int], list[int]]:
    """The sentence's sub-token ids (no special tokens) and each word's first sub-token index. A word the
    tokenizer drops entirely (a control or zero-width character) is read as the unknown token, so every word
    keeps a prediction."""
    try:
        encoded = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False)
    except (ValueError, TypeError) as error:  # byte-level BPE (RoBERTa, GPT-2) reads words only with a prefix space
        from crosstune.errors import ConfigError

        raise ConfigError(f"backbone: {type(tokenizer).__name__} cannot read pre-split words ({error}); tag with a "
                          f"WordPiece or SentencePiece backbone (BERT, MiniLM, MPNet), or save the tokenizer with "
                          f"add_prefix_space=True into a local backbone directory.") from error
    word_ids = encoded.word_ids()
    firsts: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in firsts:
            firsts[word] = position
    if len(firsts) < len(words):
        unknown = tokenizer.unk_token or "[UNK]"
        return word_pieces(tokenizer, [word if index in firsts else unknown for index, word in enumerate(words)])
    return list(encoded["input_ids"]), [firsts[index] for index in range(len(words))]


def special_tokens(tokenizer: "PreTrainedTokenizerBase") -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one sequence (BERT: [CLS] and [SEP]), read off its own output."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(index for index in range(len(full) - len(plain) + 1) if full[index : index + len(plain)] == plain)
    return list(full[:start]), list(full[start + len(plain):])


def windows(firsts: Sequence[int], num_pieces: int, body: int) -> list[Window]:
    """Windows of ``body`` sub-tokens over a sentence of ``num_pieces``, overlapping by half, each word assigned
    to the window whose centre is nearest its first sub-token (ties: the earlier window)."""
    if num_pieces <= body:
        return [Window(0, num_pieces, tuple(enumerate(firsts)))]
    stride = max(body // 2, 1)
    starts = list(range(0, num_pieces - body, stride)) + [num_pieces - body]
    owned: list[list[tuple[int, int]]] = [[] for _ in starts]
    for word, first in enumerate(firsts):
        holding = [index for index, start in enumerate(starts) if start <= first < start + body]
        best = min(holding, key=lambda index: (abs(first - (starts[index] + body / 2)), index))
        owned[best].append((word, first))
    return [Window(start, start + body, tuple(words)) for start, words in zip(starts, owned)]


UNTAGGED = -100  # the tag column of words whose tag is not known (new texts, a selection sample): the loss's ignore


class WordLists(tuple):
    """Sentences as word lists: the sample a per-word task scores backbones on, so features come one row per word
    (:func:`crosstune.selection.candidates.text_block_features`) rather than one per text."""


def untagged_labels(sentences: Sequence[Sequence[str]]) -> "torch.Tensor":
    """(W, 2) rows for words without tags: :data:`UNTAGGED` and each word's sentence, sentence by sentence."""
    import torch

    rows = [(UNTAGGED, index) for index, words in enumerate(sentences) for _ in words]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)


def encode_tagged(tokenizer: "PreTrainedTokenizerBase", sentences: Sequence[Sequence[str]],
                  labels: "torch.Tensor | None", max_length: int) -> tuple["EncodedSplit", int]:
    """Tokenize word-split ``sentences`` into windows of at most ``max_length`` tokens (special tokens
    included); ``labels`` (W, 2): each word's tag id and sentence, sentence by sentence (None: untagged words,
    :func:`untagged_labels`). Returns the split and how many sentences needed more than one window."""
    import torch

    from crosstune.data.text_encoding import EncodedSplit

    if labels is None:
        labels = untagged_labels(sentences)

    before, after = special_tokens(tokenizer)
    prefix = len(before)
    body = max_length - len(before) - len(after)
    if body < 2:
        from crosstune.errors import ConfigError

        raise ConfigError(f"params.yaml: backbone.max_length: {max_length} leaves no room for words beside the "
                          f"{len(before) + len(after)} special tokens; set it to 16 or more.")
    rows: list[list[int]] = []
    placed: list[list[tuple[int, int]]] = []  # per row: (position in the row, word row in labels)
    word_row, split_sentences = 0, 0
    for words in sentences:
        pieces, firsts = word_pieces(tokenizer, words)
        cut = windows(firsts, len(pieces), body)
        split_sentences += len(cut) > 1
        for window in cut:
            rows.append(before + pieces[window.start : window.stop] + after)
            placed.append([(prefix + first - window.start, word_row + word) for word, first in window.words])
        word_row += len(words)
    if word_row != int(labels.shape[0]):
        raise ValueError(f"{word_row} words but {int(labels.shape[0])} word labels")
    width = max((len(row) for row in rows), default=1)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int32)
    positions = torch.full((len(rows), width), -1, dtype=torch.int64)
    for index, (row, owned) in enumerate(zip(rows, placed)):
        input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.int32)
        for position, word in owned:
            positions[index, position] = word
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    return EncodedSplit(input_ids, lengths, labels, positions), split_sentences


def word_predictions(outputs: "torch.Tensor", labels: "torch.Tensor") -> list[tuple[list[int], list[Any]]]:
    """Per sentence (``labels[:, 1]``), the rows of ``outputs`` (one per word) and their tags (``labels[:, 0]``)."""
    sentence_of = labels[:, 1].tolist()
    grouped: dict[int, list[int]] = {}
    for row, sentence in enumerate(sentence_of):
        grouped.setdefault(sentence, []).append(row)
    tags = labels[:, 0].tolist()
    return [(rows, [tags[row] for row in rows]) for _, rows in sorted(grouped.items())]
