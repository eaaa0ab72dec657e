"""Test utterances shown to a person: reference and hypothesis words aligned, each error marked (substituted,
deleted, inserted), the worst utterances first (a PNG for ``dvc plots``, an HTML table for the report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import pandas as pd

MAX_UTTERANCES = 15
MAX_WORDS = 24  # a longer utterance shows its first this many aligned words
FONT_SIZE = 9
DPI = 80
COLOURS = {"substitute": "#ffd6a5", "delete": "#ffadad", "insert": "#a0c4ff"}
NAMES = {"substitute": "substituted", "delete": "deleted", "insert": "inserted"}


def alignment_column(references: Sequence[str], hypotheses: Sequence[str]) -> list[str]:
    """Each utterance's word alignment as JSON ``[[kind, reference word, hypothesis word], ...]``, for the
    predictions table (:func:`crosstune.transcription.error_rates.aligned_words`)."""
    from crosstune.transcription.error_rates import aligned_words

    return [json.dumps(aligned_words(ref, hyp)) for ref, hyp in zip(references, hypotheses)]


def worst_first(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Utterances with at least one error, most errors first (ties: the table's order)."""
    wrong = frame[frame["word_errors"] > 0]
    return wrong.sort_values("word_errors", ascending=False, kind="stable")


def aligned_transcripts_figure(path: str | Path, frame: "pd.DataFrame") -> int:
    """Write a PNG of up to :data:`MAX_UTTERANCES` test utterances with errors, worst first: each as two rows of
    aligned words (reference over hypothesis) with errors coloured. Returns how many utterances had an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crosstune.io import atomic_path

    wrong = worst_first(frame)
    shown = wrong.head(MAX_UTTERANCES)
    lines = max(len(shown), 1) * 3
    width, height = 12.0, 0.2 * lines + 0.8
    figure = plt.figure(figsize=(width, height), dpi=DPI)
    axis = figure.add_axes((0.01, 0.01, 0.98, 0.98 - 0.5 / height))
    axis.axis("off")
    axis.set_xlim(0, 2 + MAX_WORDS)
    axis.set_ylim(lines, 0)
    style = {"family": "DejaVu Sans Mono", "fontsize": FONT_SIZE, "va": "center", "ha": "center"}
    if shown.empty:
        axis.text(0, 1, "every test utterance was transcribed without a word error", **{**style, "ha": "left"})
    for number, row in enumerate(shown.itertuples(index=False)):
        label = f"{row.speaker or ''} {int(row.word_errors)} err".strip()
        axis.text(0, number * 3 + 1, label, color="grey", **{**style, "ha": "left", "fontsize": FONT_SIZE - 1})
        for column, (kind, reference, hypothesis) in enumerate(json.loads(row.alignment)[:MAX_WORDS]):
            x = 2.5 + column
            for offset, word in ((0.5, reference), (1.5, hypothesis)):
                y = number * 3 + offset
                if kind != "equal":
                    axis.add_patch(plt.Rectangle((x - 0.48, y - 0.45), 0.96, 0.9, color=COLOURS[kind], zorder=0))
                axis.text(x, y, word or "·", **style)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in COLOURS.values()]
    figure.legend(handles, [NAMES[kind] for kind in COLOURS], loc="upper right", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(f"Test utterances with word errors, worst first: {len(wrong)} of {len(frame)} "
                    f"(first {len(shown)} shown; reference above, transcript below)", x=0.01, ha="left", fontsize=10)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    plt.close(figure)
    return len(wrong)


def per_speaker_html(test: dict[str, Any]) -> str:
    """WER, CER and words of each test speaker (eval.json's ``{speaker}_wer`` ...), with the zero-shot model's
    WER beside them when the guard measured it: who the model still fails at a glance."""
    from crosstune.reporting.wording import rows_table_html

    speakers = [key[: -len("_words")] for key in test if key.endswith("_words") and key != "reference_words"]
    rows = {}
    for speaker in speakers:
        zero_shot = test.get(f"zero_shot_{speaker}_wer")
        rows[speaker] = [f"{float(test[f'{speaker}_wer']):.4f}", f"{float(test[f'{speaker}_cer']):.4f}",
                         f"{float(zero_shot):.4f}" if zero_shot is not None else "—",
                         str(int(test[f"{speaker}_words"]))]
    return rows_table_html("Per speaker", "Word and character error rates of each test speaker (lower is better), and "
                           "the pretrained model's WER before fine-tuning (zero-shot).",
                           ["speaker", "WER", "CER", "zero-shot WER", "words"], rows)


def transcripts_html(predictions: Path, shown: int = MAX_UTTERANCES, name: str = "metrics/predictions.csv") -> str:
    """The worst utterances of evaluate's predictions table (empty when the table is not there)."""
    import pandas as pd

    if not predictions.is_file():
        return ""
    frame = pd.read_csv(predictions, dtype={"label": str, "predicted": str, "speaker": str}, keep_default_na=False)
    return aligned_transcripts_html(frame, shown, name)


def aligned_transcripts_html(frame: "pd.DataFrame", shown: int, name: str) -> str:
    """The worst test utterances as an HTML table: reference and transcript words aligned, errors marked."""
    import html

    wrong = worst_first(frame)
    rows = []
    for row in wrong.head(shown).itertuples(index=False):
        cells = []
        for side in (1, 2):
            pieces = []
            for aligned in json.loads(row.alignment):
                kind, word = aligned[0], aligned[side]
                if kind == "equal":
                    pieces.append(html.escape(word))
                elif word or kind != "equal":
                    shown_word = html.escape(word) if word else "&middot;"
                    pieces.append(f'<mark style="background:{COLOURS[kind]}" title="{NAMES[kind]}">{shown_word}</mark>')
            cells.append(f"<td>{' '.join(pieces)}</td>")
        rows.append(f"<tr><td>{html.escape(str(row.speaker or ''))}</td><td>{int(row.word_errors)}</td>"
                    f"{''.join(cells)}</tr>")
    if not rows:
        return "<h2>Mistakes</h2>\n<p>Every test utterance was transcribed without a word error.</p>"
    legend = ", ".join(f'<mark style="background:{colour}">{NAMES[kind]}</mark>' for kind, colour in COLOURS.items())
    return (f"<h2>Mistakes</h2>\n<p>The {len(rows)} worst of the {len(wrong)} test utterances with word errors, "
            f"normalised as WER counts them ({legend}; all of them: <code>{html.escape(name)}</code>).</p>\n"
            f'<table class="data mistakes"><thead><tr><th>speaker</th><th>errors</th><th>reference</th>'
            f"<th>transcript</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
