"""crosstune's text clean-up as a `tokenizers` normalizer, saved into an exported model's ``tokenizer.json``.

Training and `crosstune predict` clean every text with :func:`crosstune.data.splitting.normalise_text` (HTML
entities undone, Unicode NFKC, white space collapsed, wrapping quotes dropped) before tokenizing. A user who
serves the export with the stock ``transformers.pipeline`` runs the tokenizer alone; without this, the model is
fed text it never saw in training (``&#039;`` for an apostrophe, doubled spaces). The same steps as a chain of
`tokenizers` normalizers run inside the tokenizer, wherever it is loaded:

1. HTML character references, as :func:`html.unescape` reads them: every named reference of HTML5
   (``html.entities.html5``, longest first so ``&notin;`` is not read as ``&not``), and numeric ones
   (``&#39;``, ``&#039;``, ``&#x27;``) for the code points of Latin-1, general punctuation, currency and letter-like
   symbols and every one the training texts held; those producing ``&`` last, so ``&amp;lt;`` stays ``&lt;`` as in
   one pass of ``html.unescape``;
2. NFKC;
3. runs of white space to one space, then stripped;
4. a pair of quotes wrapping the whole text (``"..."`` or ``'...'``) dropped, then stripped, three times over
   (``normalise_text`` loops; nested wrappings beyond three are left).

The model's own normalizer (BERT's lower-casing, accents) runs after these, as it did in training.
"""

from __future__ import annotations

import html
import json
import re
from html.entities import html5
from pathlib import Path
from typing import Iterable

# Code points whose numeric references are always covered: Latin-1, general punctuation, currency symbols and
# letter-like symbols (what review and clinical texts escape: quotes, dashes, ellipses, euro, trademark).
COMMON_CODE_POINTS = [*range(0x20, 0x100), *range(0x2000, 0x2070), *range(0x20A0, 0x20C1), *range(0x2100, 0x2150)]
_NUMERIC = re.compile(r"&#(?:[xX]([0-9a-fA-F]+)|([0-9]+));?")
QUOTE_PAIR_PASSES = 3


def numeric_code_points(texts: Iterable[str]) -> set[int]:
    """The code points the numeric references in ``texts`` stand for (``&#8217;`` -> 8217)."""
    found = set()
    for text in texts:
        for hexadecimal, decimal in _NUMERIC.findall(text):
            value = int(hexadecimal, 16) if hexadecimal else int(decimal)
            if value <= 0x10FFFF:
                found.add(value)
    return found


def _replace(pattern: str, content: str) -> dict[str, object]:
    return {"type": "Replace", "pattern": {"Regex": pattern}, "content": content}


def _reference_steps(code_points: Iterable[int]) -> list[dict[str, object]]:
    """One Replace per HTML reference; ordered so the chain reads a text as one pass of html.unescape does."""
    steps: list[tuple[str, str]] = []
    for name in sorted(html5, key=lambda name: (-len(name), name)):  # longest first
        steps.append((re.escape(f"&{name}"), html5[name]))
    for point in sorted(set(code_points)):
        decoded = html.unescape(f"&#{point};")  # html.unescape's own mapping (0x80-0x9f as Windows-1252, ...)
        # the whole number: &#82 must not match inside &#8217;
        steps.append((f"&#(?:0*{point}(?![0-9])|[xX]0*(?i:{point:x})(?![0-9a-fA-F]));?", decoded))
    last = [step for step in steps if "&" in step[1]]  # would start a second reference: after all the others
    return [_replace(pattern, content) for pattern, content in [*(s for s in steps if s not in last), *last]]


def crosstune_normalizer(code_points: Iterable[int] = (), lowercase: bool = False) -> list[dict[str, object]]:
    """The normalizers (as ``tokenizer.json`` spells them) that do what ``normalise_text`` does (``lowercase``:
    ``prepare.lowercase`` was on)."""
    steps = _reference_steps([*COMMON_CODE_POINTS, *code_points])
    steps += [{"type": "NFKC"}, _replace(r"\s+", " "), {"type": "Strip", "strip_left": True, "strip_right": True}]
    for _ in range(QUOTE_PAIR_PASSES):
        for quote in ('"', "'"):
            # the opening quote where the text also ends with one, the closing where it also starts with one
            steps.append(_replace(rf"\A{quote}(?=[\s\S]*{quote}\z)|(?<=\A{quote}[\s\S]*){quote}\z", ""))
            steps.append({"type": "Strip", "strip_left": True, "strip_right": True})
    if lowercase:
        steps.append({"type": "Lowercase"})
    return steps


def add_crosstune_normalizer(tokenizer_json: str | Path, texts: Iterable[str] = (), lowercase: bool = False) -> None:
    """Put :func:`crosstune_normalizer` before the tokenizer's own normalizer in ``tokenizer_json`` (rewritten in
    place: the caller writes into a temporary export directory). ``texts``: the raw training texts, whose numeric
    references beyond the common ones are covered too."""
    path = Path(tokenizer_json)
    spec = json.loads(path.read_text(encoding="utf-8"))
    own = spec.get("normalizer")
    chain = crosstune_normalizer(numeric_code_points(texts), lowercase)
    if own is not None:
        chain += own["normalizers"] if own.get("type") == "Sequence" else [own]
    spec["normalizer"] = {"type": "Sequence", "normalizers": chain}
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
