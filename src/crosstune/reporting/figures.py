"""Pictures of what the model got wrong, for ``dvc plots`` (an image plot) and the report."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

MAX_EXAMPLES = 25


def misclassified_figure(path: str | Path, true_labels: Sequence[str], predicted: Sequence[str],
                         images: Any = None, texts: Sequence[str] | None = None, waveforms: Any = None,
                         sample_rate: int = 0) -> int:
    """Write a PNG of up to 25 misclassified test examples (a grid of images, of log-mel spectrograms of
    ``waveforms`` (int16, at ``sample_rate``), or text snippets) with ``true -> predicted`` captions; returns
    how many were wrong in all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crosstune.io import atomic_path

    wrong = [index for index, (truth, guess) in enumerate(zip(true_labels, predicted)) if truth != guess]
    shown = wrong[:MAX_EXAMPLES]
    if images is not None or waveforms is not None:
        columns = 5
        rows = max(1, -(-len(shown) // columns))
        figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
        for axis in axes.flat:
            axis.axis("off")
        for axis, index in zip(axes.flat, shown):
            if waveforms is not None:
                _spectrogram(axis, waveforms[index], sample_rate)
                axis.set_title(f"{true_labels[index]} → {predicted[index]}", fontsize=8)
                continue
            image = images[index]
            picture = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
            axis.imshow(picture.numpy(), cmap="gray" if image.shape[0] == 1 else None)
            axis.set_title(f"{true_labels[index]} → {predicted[index]}", fontsize=8)
    else:
        figure, axis = plt.subplots(figsize=(10, 0.2 * max(len(shown), 1) + 0.9))
        axis.axis("off")
        lines = [f"[{true_labels[i]} → {predicted[i]}] " + textwrap.shorten(str(texts[i]), 110) for i in shown]
        axis.text(0, 1, "\n".join(lines) or "no misclassified examples", va="top", family="monospace", fontsize=8)
    figure.suptitle(f"Misclassified test examples: {len(wrong)} of {len(true_labels)} (first {len(shown)} shown)")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=80)
    plt.close(figure)
    return len(wrong)


def _spectrogram(axis: Any, waveform: Any, sample_rate: int) -> None:
    """A 64-bin log-mel spectrogram (dB), time across, low frequencies at the bottom."""
    import numpy as np

    from crosstune.backbones.audio_features import mel_power
    from crosstune.data.audio import waveforms_to_float

    window = 1 << (int(0.025 * sample_rate) - 1).bit_length()
    mel = mel_power(waveforms_to_float(waveform.unsqueeze(0)), sample_rate, window, sample_rate // 100, 64)[0]
    decibels = 10 * np.log10(mel.numpy().T + 1e-10)
    seconds = waveform.shape[0] / sample_rate
    axis.imshow(decibels, origin="lower", aspect="auto", cmap="magma", vmin=decibels.max() - 80,
                extent=(0, seconds, 0, sample_rate / 2000))
    axis.axis("on")
    axis.tick_params(labelsize=6)
    axis.set_xlabel("s", fontsize=6)
    axis.set_ylabel("kHz", fontsize=6)
