"""Baselines for token tagging: a CRF over word features and a dictionary of the training entities.

Both read sentences as word lists and predict a list of IOB2 tags per sentence, with scikit-learn's
``fit``/``predict`` (:mod:`crosstune.evaluation.baselines` registers them).
"""

from __future__ import annotations

from typing import Any, Sequence

from crosstune.data.tagging import spans_of_tags, tags_of_spans


def word_features(words: Sequence[str], index: int) -> dict[str, Any]:
    """The CRF's features of word ``index``: its lower case, 2- and 3-letter suffixes and prefix, shape
    (upper, title, digit, has a digit or hyphen), and the same of its neighbours (sklearn-crfsuite's NER
    tutorial features, widened by one word each side)."""
    word = words[index]
    features: dict[str, Any] = {
        "bias": 1.0, "lower": word.lower(), "suffix3": word[-3:], "suffix2": word[-2:], "prefix3": word[:3],
        "upper": word.isupper(), "title": word.istitle(), "digit": word.isdigit(),
        "has_digit": any(char.isdigit() for char in word), "hyphen": "-" in word, "length": min(len(word), 10),
    }
    for offset in (-2, -1, 1, 2):
        position = index + offset
        if 0 <= position < len(words):
            neighbour = words[position]
            features.update({f"{offset}:lower": neighbour.lower(), f"{offset}:suffix3": neighbour[-3:],
                             f"{offset}:title": neighbour.istitle(), f"{offset}:upper": neighbour.isupper()})
        elif abs(offset) == 1:
            features["BOS" if offset < 0 else "EOS"] = True
    return features


class CrfTagger:
    """sklearn-crfsuite's linear-chain CRF on :func:`word_features`."""

    def __init__(self, c1: float = 0.1, c2: float = 0.1, max_iterations: int = 100) -> None:
        self.c1, self.c2, self.max_iterations = c1, c2, max_iterations
        self.model: Any = None

    @staticmethod
    def _features(sentences: Sequence[Sequence[str]]) -> list[list[dict[str, Any]]]:
        return [[word_features(words, index) for index in range(len(words))] for words in sentences]

    def fit(self, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]]) -> "CrfTagger":
        import sklearn_crfsuite

        self.model = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=self.c1, c2=self.c2,
                                          max_iterations=self.max_iterations, all_possible_transitions=True)
        self.model.fit(self._features(sentences), [list(row) for row in tags])
        return self

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        return [list(row) for row in self.model.predict(self._features(sentences))]


class DictionaryTagger:
    """Tags every case-insensitive occurrence of a training entity's words, longest match first, with the type
    that entity most often had."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, ...], str] = {}
        self.longest = 0

    def fit(self, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]]) -> "DictionaryTagger":
        counts: dict[tuple[str, ...], dict[str, int]] = {}
        for words, row in zip(sentences, tags):
            for start, stop, kind in spans_of_tags(row):
                key = tuple(word.lower() for word in words[start:stop])
                counts.setdefault(key, {}).setdefault(kind, 0)
                counts[key][kind] += 1
        self.entries = {key: max(sorted(kinds), key=lambda kind: kinds[kind]) for key, kinds in counts.items()}
        self.longest = max((len(key) for key in self.entries), default=0)
        return self

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        results = []
        for words in sentences:
            lower = [word.lower() for word in words]
            spans, index = [], 0
            while index < len(words):
                for length in range(min(self.longest, len(words) - index), 0, -1):
                    kind = self.entries.get(tuple(lower[index : index + length]))
                    if kind is not None:
                        spans.append((index, index + length, kind))
                        index += length
                        break
                else:
                    index += 1
            results.append(tags_of_spans(len(words), spans))
        return results
