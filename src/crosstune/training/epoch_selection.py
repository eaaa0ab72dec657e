"""Which epoch's weights a run keeps: the best validation ``select_metric``, smoothed over a centred window.

With a small validation split one example moves macro-F1 by points (the text default validates on 90
reviews, 8 of them neutral), so the single best epoch is partly noise. The kept epoch is the best over
epochs e = 1..E of the centred moving average of the validation values v (``finetune.select_window`` = 2h + 1)

    s(e) = mean{ v(k) : max(1, e - h) <= k <= min(E, e + h) },

ties to the earlier epoch; h = 0 is the epoch's own value. s(e) is final once epoch e + h has been
validated (or the run has ended), so a run holds the weights of the last h epochs until then. Smoothing
the noisy curve before taking its maximum is the reason; the window is the rule measured steadiest in
``bench/recipes/selection_noise.py`` (text: 0.557 +- 0.010 test macro-F1 against 0.540 +- 0.020 for the
single best epoch, over 3 seeds).
"""

from __future__ import annotations


def smoothed(values: list[float], epoch: int, half: int) -> float:
    """s(``epoch``) over the epochs validated so far (``values[k - 1]`` is epoch k's value)."""
    window = values[max(0, epoch - 1 - half): min(len(values), epoch + half)]
    return sum(window) / len(window)


def settled_through(epochs_run: int, half: int, ended: bool) -> int:
    """The last epoch whose s(e) can no longer change after ``epochs_run`` epochs: all of them once the run
    has ended (its last epoch, or early stopping), else those at least ``half`` epochs back."""
    return epochs_run if ended else max(0, epochs_run - half)
