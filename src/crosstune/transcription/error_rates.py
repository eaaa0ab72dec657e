"""Word and character error rates after Whisper's English text normaliser.

WER = (S + D + I) / N over words, CER the same over characters (Levenshtein alignment; jiwer,
https://github.com/jitsi/jiwer, computes both). Both sides first go through Whisper's
``EnglishTextNormalizer`` (Radford et al. 2022, https://arxiv.org/abs/2212.04356, appendix C): lower case,
punctuation and fillers removed, spelled numbers written as digits, so "Seven." and "7" are the same word.
That normaliser joins a run of spelled digits into one number ("one nine nine three" -> "1993") but leaves
written ones apart ("9, 9, 8" -> "9 9 8"), and keeps a lone "one" (and turns a lone "1" into "one", so that
"one of them" stays words); with ``split_digits`` every digit then counts as its own word and a single-digit
number word as that digit, so a digit string scores the same however the recogniser writes or punctuates it, and
one wrong digit is one error.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Sequence

_DIGIT = re.compile(r"\d")
_DIGIT_WORDS = {word: str(value) for value, word in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))}


@lru_cache(maxsize=1)
def _normaliser() -> Any:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    # Whisper's British -> American spelling table ships as normalizer.json with OpenAI's tokenizer files,
    # which the packaged CTranslate2 model lacks; without it the rest of the normaliser is unchanged.
    return EnglishTextNormalizer({})


def normalise(text: str, split_digits: bool = True) -> str:
    """``text`` as WER compares it: Whisper's English normalisation, then (``split_digits``) one word per digit."""
    words = _normaliser()(text)
    if not split_digits:
        return " ".join(words.split())
    words = _DIGIT.sub(lambda match: f" {match.group(0)} ", words)
    return " ".join(_DIGIT_WORDS.get(word, word) for word in words.split())


def error_rates(references: Sequence[str], hypotheses: Sequence[str], split_digits: bool = True) -> dict[str, float]:
    """Corpus WER and CER (errors summed over all utterances, over all reference words or characters) of
    normalised texts, and the counts behind them. A reference that normalises to nothing is refused by
    the reader of the data (an empty transcript), so N > 0 here."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalise(text, split_digits) for text in references]
    hyps = [normalise(text, split_digits) for text in hypotheses]
    if not any(refs):
        raise ValueError("every reference transcript is empty after normalising; nothing to score")
    # jiwer refuses empty references; an utterance whose reference normalises to nothing ("um") adds its
    # hypothesis's words as insertions, counted by hand against the same denominator.
    kept = [index for index, ref in enumerate(refs) if ref]
    words = jiwer.process_words([refs[i] for i in kept], [hyps[i] for i in kept])
    characters = jiwer.process_characters([refs[i] for i in kept], [hyps[i] for i in kept])
    extra_words = sum(len(hyps[i].split()) for i in range(len(refs)) if not refs[i])
    extra_characters = sum(len(hyps[i]) for i in range(len(refs)) if not refs[i])
    reference_words = words.hits + words.substitutions + words.deletions
    reference_characters = characters.hits + characters.substitutions + characters.deletions
    word_errors = words.substitutions + words.deletions + words.insertions + extra_words
    character_errors = characters.substitutions + characters.deletions + characters.insertions + extra_characters
    return {"wer": word_errors / reference_words, "cer": character_errors / reference_characters,
            "substitutions": float(words.substitutions), "deletions": float(words.deletions),
            "insertions": float(words.insertions + extra_words), "reference_words": float(reference_words)}


def grouped_error_rates(references: Sequence[str], hypotheses: Sequence[str], groups: Sequence[str],
                        split_digits: bool = True) -> dict[str, dict[str, float]]:
    """:func:`error_rates` per group (a speaker), groups in sorted order."""
    result = {}
    for group in sorted(set(groups)):
        rows = [index for index, value in enumerate(groups) if value == group]
        result[group] = error_rates([references[i] for i in rows], [hypotheses[i] for i in rows], split_digits)
    return result


def aligned_words(reference: str, hypothesis: str, split_digits: bool = True) -> list[tuple[str, str, str]]:
    """The normalised words of one utterance aligned: (kind, reference word, hypothesis word) with kind
    ``equal``, ``substitute``, ``delete`` or ``insert``, for showing where a transcript went wrong."""
    import jiwer

    ref, hyp = normalise(reference, split_digits).split(), normalise(hypothesis, split_digits).split()
    if not ref:
        return [("insert", "", word) for word in hyp]
    if not hyp:
        return [("delete", word, "") for word in ref]
    output = jiwer.process_words(" ".join(ref), " ".join(hyp))
    rows: list[tuple[str, str, str]] = []
    for chunk in output.alignments[0]:
        kind = chunk.type
        refs = ref[chunk.ref_start_idx:chunk.ref_end_idx]
        hyps = hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if kind == "insert":
            rows += [("insert", "", word) for word in hyps]
        elif kind == "delete":
            rows += [("delete", word, "") for word in refs]
        else:
            rows += [(kind, r, h) for r, h in zip(refs, hyps)]
    return rows
