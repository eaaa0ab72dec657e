"""Tagged test sentences shown to a person: gold entities beside predicted ones, what was missed or spurious marked
(a PNG for ``dvc plots``, an HTML table for the report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from crosstune.data.tagging import TaggedSentence

MAX_SENTENCES = 12
MAX_CHARS = 150  # a longer sentence shows this many characters around its first mistake
FONT_SIZE = 8
DPI = 80  # measured and saved at one resolution: hinted glyph advances differ between resolutions
CHAR_WIDTH = 0.602  # DejaVu Sans Mono's advance width, in em: the x axis spans about this many characters
COLOURS = {"found": "#b7e4c7", "missed": "#ffd6a5", "spurious": "#ffadad"}


def _marked(sentence: "TaggedSentence", tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """Entities of ``tags`` as character spans ``(start, end, type)``."""
    from crosstune.data.tagging import spans_of_tags

    return {(sentence.words[first][0], sentence.words[stop - 1][1], kind) for first, stop, kind in spans_of_tags(tags)}


def tagged_sentences_figure(path: str | Path, sentences: Sequence["TaggedSentence"],
                            predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]] | None = None) -> int:
    """Write a PNG of up to :data:`MAX_SENTENCES` test sentences whose predicted entities differ from the gold
    ones: each as a gold line (entities found green, missed orange) over a predicted line (found green,
    spurious red). ``gold`` defaults to the sentences' own tags. Returns how many sentences had a mistake."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crosstune.io import atomic_path

    gold = gold if gold is not None else [sentence.tags for sentence in sentences]
    wrong = []
    for sentence, expected_tags, guessed_tags in zip(sentences, gold, predicted):
        expected, given = _marked(sentence, expected_tags), _marked(sentence, guessed_tags)
        if expected != given:
            wrong.append((sentence, expected, given))
    shown = wrong[:MAX_SENTENCES]
    lines = max(len(shown), 1) * 3
    width, height = 12.0, 0.19 * lines + 0.8
    figure = plt.figure(figsize=(width, height), dpi=DPI)
    axis = figure.add_axes((0.01, 0.01, 0.98, 0.98 - 0.5 / height))
    axis.axis("off")
    axis.set_xlim(0, 0.98 * width * 72 / (CHAR_WIDTH * FONT_SIZE))
    axis.set_ylim(lines, 0)
    style = {"family": "DejaVu Sans Mono", "fontsize": FONT_SIZE, "va": "center"}
    renderer, to_data = figure.canvas.get_renderer(), axis.transData.inverted()

    def width(string: str) -> float:
        """How wide ``string`` is drawn, in x units: highlights sit under the characters they mark, whatever
        the font's advance widths."""
        if not string:
            return 0.0
        probe = axis.text(0, 0, string.replace(" ", "\u00a0"), **style)
        extent = probe.get_window_extent(renderer=renderer)
        probe.remove()
        return float(to_data.transform((extent.x1, extent.y0))[0] - to_data.transform((extent.x0, extent.y0))[0])

    margin = width("pred ")
    if not shown:
        axis.text(0, 1, "every test sentence's entities were found exactly", **style)
    for number, (sentence, expected, given) in enumerate(shown):
        mistakes = sorted(start for start, _, _ in expected ^ given)
        left = max(0, min(mistakes[0] - MAX_CHARS // 3, len(sentence.text) - MAX_CHARS))
        text = sentence.text[left : left + MAX_CHARS]
        for row, (name, spans) in enumerate((("gold", expected), ("pred", given))):
            y = number * 3 + row + 0.5
            axis.text(0, y, name, color="grey", **style)
            axis.text(margin, y, text.replace("\n", " "), **style)
            for start, end, kind in spans:
                if end <= left or start >= left + MAX_CHARS:
                    continue
                state = "found" if (start, end, kind) in expected & given else ("missed" if row == 0 else "spurious")
                low, high = max(start, left) - left, min(end, left + MAX_CHARS) - left
                start_x = margin + width(text[:low].replace("\n", " "))
                axis.add_patch(plt.Rectangle((start_x, y - 0.45), width(text[low:high].replace("\n", " ")), 0.9,
                                             color=COLOURS[state], zorder=0))
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in COLOURS.values()]
    figure.legend(handles, list(COLOURS), loc="upper right", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(f"Test sentences with entity mistakes: {len(wrong)} of {len(sentences)} (first {len(shown)} shown)",
                    x=0.01, ha="left", fontsize=10)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    plt.close(figure)
    return len(wrong)


def tagged_mistakes_html(predictions: Path, shown: int, name: str = "metrics/predictions.csv") -> str:
    """Test sentences whose entities were not all found exactly, gold above predicted, each entity highlighted:
    found green, missed orange, spurious red (``predictions``: evaluate's predictions table of a tagging model;
    empty where there is none yet)."""
    import html

    import pandas as pd

    from crosstune.data.tagging import TaggedSentence

    if not predictions.is_file():
        return ""
    frame = pd.read_csv(predictions, dtype={"label": str, "predicted": str}, keep_default_na=False)
    wrong = frame[(frame["entities_missed"] > 0) | (frame["entities_spurious"] > 0)]
    rows = []
    for row in wrong.head(shown).itertuples(index=False):
        sentence = TaggedSentence.from_prepared(str(row.text), row.words)
        expected = _marked(sentence, str(row.label).split())
        given = _marked(sentence, str(row.predicted).split())
        cells = []
        for spans, other, wrong_state in ((expected, given, "missed"), (given, expected, "spurious")):
            pieces, position = [], 0
            for start, end, kind in sorted(spans):
                state = "found" if (start, end, kind) in other else wrong_state
                pieces.append(html.escape(sentence.text[position:start]))
                pieces.append(f'<mark style="background:{COLOURS[state]}" title="{html.escape(kind)}: {state}">'
                              f"{html.escape(sentence.text[start:end])}</mark>")
                position = end
            pieces.append(html.escape(sentence.text[position:]))
            cells.append(f"<td>{''.join(pieces)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    if not rows:
        return "<h2>Mistakes</h2>\n<p>Every test sentence's entities were found exactly.</p>"
    legend = ", ".join(f'<mark style="background:{colour}">{state}</mark>' for state, colour in COLOURS.items())
    return (f"<h2>Mistakes</h2>\n<p>{len(rows)} of the {len(wrong)} test sentences whose entities were not all found "
            f"exactly ({legend}; all of them: <code>{html.escape(name)}</code>).</p>\n"
            f'<table class="data mistakes"><thead><tr><th>gold entities</th><th>predicted entities</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")
