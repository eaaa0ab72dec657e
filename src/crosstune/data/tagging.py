"""Tagged sentences: reading CoNLL/IOB files and JSON Lines of character spans, one tag scheme (IOB2).

Two shapes of entity annotation are in use. CoNLL-style files (CoNLL-2003, the BioNLP corpora) give one
``token<TAB>tag`` line per word with a blank line between sentences, in IOB1, IOB2 or BIOES; annotation
tools (Label Studio, doccano) export JSON Lines of texts with character spans. Both become a
:class:`TaggedSentence`: the text, the words' character offsets and one IOB2 tag per word (Ramshaw & Marcus
1995, https://aclanthology.org/W95-0107/; IOB2 as in Tjong Kim Sang & Veenstra 1999,
https://aclanthology.org/E99-1023/), so spans go to tags and back exactly.

A span file's text is split into words at white space and around every punctuation character
(:data:`WORD_PATTERN`, BERT's pre-tokenisation), the split ``crosstune predict`` applies to new texts.
Every problem is one :class:`~crosstune.errors.DataError` naming the file, the line and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from crosstune.errors import DataError

WORD_PATTERN = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits, or one punctuation character
SCHEMES = ("auto", "iob1", "iob2", "bioes")  # prepare.tag_scheme: what a CoNLL file's tags are in
CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio", ".bioes", ".tsv", ".txt")
SPAN_SUFFIXES = (".jsonl", ".json")
DOCSTART = "-DOCSTART-"
_TAG = re.compile(r"^(?:O|([BIES])-(\S+))$")


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence: its text, each word's ``(start, end)`` character offsets and IOB2 tag; ``line`` is where it
    starts in its file (for errors)."""

    text: str
    words: tuple[tuple[int, int], ...]
    tags: tuple[str, ...]
    line: int = 0

    def tokens(self) -> list[str]:
        return [self.text[start:end] for start, end in self.words]

    def words_json(self) -> str:
        """The word offsets as the prepared tables' ``words`` column stores them (JSON ``[[start, end], ...]``)."""
        return json.dumps([list(span) for span in self.words])

    @classmethod
    def from_prepared(cls, text: str, words: str, tags: Sequence[str] = ()) -> "TaggedSentence":
        """A sentence read back from a prepared table's ``text`` and ``words`` columns (the one parser of them)."""
        return cls(text, tuple((int(start), int(end)) for start, end in json.loads(words)), tuple(tags))


def split_words(text: str) -> list[tuple[int, int]]:
    """Character offsets of the words of ``text`` (:data:`WORD_PATTERN`)."""
    return [match.span() for match in WORD_PATTERN.finditer(text)]


def join_words(tokens: Sequence[str]) -> tuple[str, tuple[tuple[int, int], ...]]:
    """A text of ``tokens`` joined by single spaces, and each token's offsets in it."""
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + 1
    return " ".join(tokens), tuple(offsets)


def entity_type(tag: str) -> str:
    return tag[2:] if len(tag) > 2 else ""


def spans_of_tags(tags: Sequence[str], strict: bool = True) -> list[tuple[int, int, str]]:
    """Entities of an IOB2 tag sequence as ``(first word, last word + 1, type)``: an entity starts at ``B-`` and
    runs over the ``I-`` of its type that follow. A stray ``I-`` (after ``O`` or another type) starts nothing when
    ``strict`` (seqeval's strict mode, how models are scored) and starts an entity otherwise (conlleval's reading,
    and the Hugging Face token-classification pipeline's: how predictions are returned)."""
    spans: list[tuple[int, int, str]] = []
    start, kind = None, ""
    for index, tag in enumerate([*tags, "O"]):
        continues = tag.startswith("I-") and entity_type(tag) == kind
        if start is not None and not continues:
            spans.append((start, index, kind))
            start = None
        if tag.startswith("B-") or (not strict and tag.startswith("I-") and start is None):
            start, kind = index, entity_type(tag)
    return spans


def tags_of_spans(length: int, spans: Sequence[tuple[int, int, str]]) -> list[str]:
    """The IOB2 tags of ``length`` words holding the (non-overlapping) word spans ``spans``."""
    tags = ["O"] * length
    for start, stop, kind in spans:
        tags[start] = f"B-{kind}"
        for index in range(start + 1, stop):
            tags[index] = f"I-{kind}"
    return tags


def to_iob2(tags: Sequence[str], scheme: str, where: str, lines: Sequence[int]) -> list[str]:
    """``tags`` in ``scheme`` (iob1, iob2 or bioes) rewritten as IOB2; a tag the scheme does not allow, or an
    IOB2 ``I-`` that continues no entity, is a DataError at its line."""
    out: list[str] = []
    allowed = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}[scheme]
    previous = "O"
    for index, tag in enumerate(tags):
        match = _TAG.match(tag)
        if match is None or (match.group(1) and match.group(1) not in allowed):
            raise DataError(f"{where}:{lines[index]}: tag {tag!r} is not in the {scheme.upper()} scheme (O, "
                            f"{', '.join(f'{prefix}-TYPE' for prefix in allowed)}); fix the tag, or set "
                            f"prepare.tag_scheme to the file's scheme ({', '.join(SCHEMES[1:])}).")
        prefix, kind = (match.group(1) or "O"), (match.group(2) or "")
        continues = previous != "O" and entity_type(previous) == kind and not previous.startswith(("E-", "S-"))
        if prefix == "I" and not continues:
            if scheme != "iob1":
                raise DataError(f"{where}:{lines[index]}: {tag} follows {previous} without a B-{kind}; tag the "
                                f"entity's first word B-{kind}, or set prepare.tag_scheme: iob1 if the file is IOB1.")
            prefix = "B"  # IOB1: an I- after O or another type starts an entity
        if prefix in ("E", "S") or (prefix == "I" and scheme == "bioes"):
            if prefix in ("I", "E") and not continues:
                raise DataError(f"{where}:{lines[index]}: {tag} follows {previous} without a B-{kind}; fix the "
                                f"tags (BIOES: B- I-* E- or S-).")
            prefix = "B" if prefix == "S" else "I"
        out.append("O" if prefix == "O" else f"{prefix}-{kind}")
        previous = tag
    return out


def detect_scheme(tags: Sequence[str]) -> str:
    """BIOES when any tag is ``E-``/``S-``, else IOB2 (IOB1 is indistinguishable from a broken IOB2 file, so it
    is named in ``prepare.tag_scheme``)."""
    return "bioes" if any(tag[:2] in ("E-", "S-") for tag in tags) else "iob2"


def _conll_blocks(path: Path) -> Iterator[list[tuple[int, str, str]]]:
    """Sentences of a CoNLL file as ``(line, token, tag)`` rows: the first column is the token, the last the
    tag; blank or white-space-only lines and ``-DOCSTART-`` lines end a sentence."""
    try:
        lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 ({error.reason} at byte {error.start}); re-save it as UTF-8.") from error
    block: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if block:
                yield block
            block = []
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: {line.strip()!r} has one column; each line needs a token and its tag "
                            f"(token<TAB>tag), with a blank line between sentences.")
        block.append((number, fields[0], fields[-1]))
    if block:
        yield block


def read_conll(path: str | Path, scheme: str = "auto") -> list[TaggedSentence]:
    """The sentences of a CoNLL/IOB file, tags rewritten as IOB2 (``scheme``: :data:`SCHEMES`)."""
    path = Path(path)
    blocks = list(_conll_blocks(path))
    if not blocks:
        raise DataError(f"{path}: no tagged sentences; give token<TAB>tag lines with a blank line between sentences.")
    if scheme == "auto":
        scheme = detect_scheme([tag for block in blocks for _, _, tag in block])
    sentences = []
    for block in blocks:
        lines = [number for number, _, _ in block]
        tags = to_iob2([tag for _, _, tag in block], scheme, str(path), lines)
        text, words = join_words([token for _, token, _ in block])
        sentences.append(TaggedSentence(text, words, tuple(tags), lines[0]))
    return sentences


def _span_entities(record: dict, path: Path, number: int) -> list[tuple[int, int, str]]:
    """A record's entities as ``(start, end, label)`` character spans: ``entities`` as objects (``start``,
    ``end``, ``label``), or doccano's ``label`` as ``[start, end, label]`` triples."""
    raw = record.get("entities", record.get("label", []))
    if not isinstance(raw, list):
        raise DataError(f"{path}:{number}: 'entities' must be a list of {{\"start\", \"end\", \"label\"}} objects.")
    spans = []
    for item in raw:
        try:
            start, end, label = ((item["start"], item["end"], item["label"]) if isinstance(item, dict)
                                 else (item[0], item[1], item[2]))
            spans.append((int(start), int(end), str(label)))
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise DataError(f"{path}:{number}: entity {item!r} is not {{\"start\": int, \"end\": int, \"label\": "
                            f"str}} ({type(error).__name__}); fix that entity.") from error
    return sorted(spans)


def read_spans(path: str | Path) -> list[TaggedSentence]:
    """The texts of a JSON Lines file (``{"text": ..., "entities": [{"start", "end", "label"}]}``, or doccano's
    ``"label": [[start, end, label]]``) as tagged sentences; every span must fall on word boundaries."""
    path = Path(path)
    sentences = []
    try:
        lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 ({error.reason} at byte {error.start}); re-save it as UTF-8.") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno}); each line must "
                            f"be one JSON object.") from error
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{number}: no \"text\" string; each line needs {{\"text\": ..., \"entities\": "
                            f"[...]}}.")
        text = record["text"]
        if not text.strip():
            raise DataError(f"{path}:{number}: empty text; remove the line or fill in its text.")
        words = split_words(text)
        starts = {start: index for index, (start, _) in enumerate(words)}
        ends = {end: index for index, (_, end) in enumerate(words)}
        word_spans, last_end = [], -1
        for start, end, label in _span_entities(record, path, number):
            shown = f"{label} [{start}, {end})"
            if not 0 <= start < end <= len(text):
                raise DataError(f"{path}:{number}: entity {shown} is out of range for a text of {len(text)} "
                                f"characters; fix its offsets (0 <= start < end <= {len(text)}).")
            if start < last_end:
                raise DataError(f"{path}:{number}: entity {shown} overlaps the one before it; keep one of them "
                                f"(entities are flat: one per word).")
            if start not in starts or end not in ends:
                raise DataError(f"{path}:{number}: entity {shown} ({text[start:end]!r}) does not fall on word "
                                f"boundaries (words split at white space and around punctuation); move its start "
                                f"and end to a word's edges.")
            if not re.fullmatch(r"\S+", label):
                raise DataError(f"{path}:{number}: entity label {label!r} must be one word without spaces; rename it.")
            word_spans.append((starts[start], ends[end] + 1, label))
            last_end = end
        sentences.append(TaggedSentence(text, tuple(words), tuple(tags_of_spans(len(words), word_spans)), number))
    if not sentences:
        raise DataError(f"{path}: no texts; give one JSON object per line.")
    return sentences


def read_tagged(path: str | Path, scheme: str = "auto") -> list[TaggedSentence]:
    """A tagged file by its suffix: JSON Lines of spans (:data:`SPAN_SUFFIXES`) or CoNLL (:data:`CONLL_SUFFIXES`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SPAN_SUFFIXES:
        return read_spans(path)
    if suffix in CONLL_SUFFIXES:
        return read_conll(path, scheme)
    raise DataError(f"{path}: unsupported file type {suffix!r} for token tagging; use CoNLL/IOB "
                    f"({', '.join(CONLL_SUFFIXES)}) or JSON Lines of spans ({', '.join(SPAN_SUFFIXES)}).")


def entity_records(sentence: TaggedSentence, tags: Sequence[str],
                   scores: Sequence[float] | None = None) -> list[dict]:
    """Entities of predicted ``tags`` (one per word of ``sentence``; a stray ``I-`` starts one, as in the Hugging
    Face pipeline) as ``{"start", "end", "label", "text", "score"}`` character spans; ``score`` is the mean of the
    words' tag probabilities (the pipeline's aggregation)."""
    records = []
    for first, stop, kind in spans_of_tags(tags, strict=False):
        start, end = sentence.words[first][0], sentence.words[stop - 1][1]
        record = {"start": start, "end": end, "label": kind, "text": sentence.text[start:end]}
        if scores is not None:
            record["score"] = float(sum(scores[first:stop]) / (stop - first))
        records.append(record)
    return records
