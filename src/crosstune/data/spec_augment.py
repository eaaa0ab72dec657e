"""SpecAugment's time and frequency masking of training log-mel features (Park et al. 2019,
https://arxiv.org/abs/1904.08779), the augmentation Whisper fine-tuning uses (``apply_spec_augment``).

For a (B, F, T) batch, about ``time_prob * T / time_length`` spans of ``time_length`` frames (at least
``TIME_MIN_MASKS``) and ``freq_prob * F / freq_length`` bands of ``freq_length`` mel bins are set to 0 per
clip: :math:`x_{b,f,t} = 0` for :math:`t \\in [t_0, t_0 + L_t)` or :math:`f \\in [f_0, f_0 + L_f)`. The spans
are drawn by transformers' own sampler (``_compute_mask_indices``, what ``WhisperModel`` masks with), from a
NumPy state seeded by the training loop's generator, so one seed fixes every mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TIME_MIN_MASKS = 2  # WhisperConfig.mask_time_min_masks
FREQ_MIN_MASKS = 0  # WhisperConfig.mask_feature_min_masks


@dataclass(frozen=True)
class SpecAugment:
    """Masking settings (``augment.time_mask_*``, ``augment.freq_mask_*``); a probability of 0 turns an axis off
    (whether any is on: ``AugmentParams.masks_audio``)."""

    time_prob: float
    time_length: int
    freq_prob: float
    freq_length: int

    def __call__(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Masked copy of ``features``. Shape: (B, F, T) -> (B, F, T)."""
        from transformers.models.whisper.modeling_whisper import _compute_mask_indices

        batch, bins, frames = features.shape
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        saved = np.random.get_state()
        np.random.seed(seed)  # the sampler draws from NumPy's global state: seeded here, restored after
        try:
            times = (_compute_mask_indices((batch, frames), self.time_prob, min(self.time_length, frames),
                                           min_masks=TIME_MIN_MASKS) if self.time_prob > 0 else None)
            bands = (_compute_mask_indices((batch, bins), self.freq_prob, min(self.freq_length, bins),
                                           min_masks=FREQ_MIN_MASKS) if self.freq_prob > 0 else None)
        finally:
            np.random.set_state(saved)
        masked = features.clone()
        if times is not None:
            masked.masked_fill_(torch.from_numpy(times)[:, None, :], 0.0)
        if bands is not None:
            masked.masked_fill_(torch.from_numpy(bands)[:, :, None], 0.0)
        return masked
