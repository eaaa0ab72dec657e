"""The Whisper recogniser as crosstune trains and runs it: a window fitted to the data, labels as token ids,
and decoding batched by length.

Whisper reads 30-second windows of log-mel frames (1,500 encoder positions) whatever the clip's length. For
short utterances almost all of that is padding, so the recogniser is cut to a window just longer than the
longest training clip: the encoder's positional table keeps its first ``50 x seconds`` rows and the feature
extractor pads to ``seconds`` (``chunk_length``). The result is still a stock ``WhisperForConditionalGeneration``
(``max_source_positions`` smaller), so ``transformers.pipeline("automatic-speech-recognition")`` runs the
exported directory exactly as crosstune does. Without fine-tuning the cut hurts (Whisper was trained on 30-second
windows and, cut, often repeats itself until the decoding bound): the guard's zero-shot reference is therefore the
pretrained model at its own 30 seconds (:func:`crosstune.transcription.storage.pretrained_as_released`).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration

FRAMES_PER_SECOND = 100  # Whisper's log-mel hop: 10 ms
POSITIONS_PER_SECOND = 50  # the encoder's second convolution halves the frames
MAX_SECONDS = 30  # Whisper's window: longer recordings need chunking, which this task does not do
IGNORED = -100  # label positions the loss skips (padding), as Hugging Face's models expect


class _BoundByNewTokens(logging.Filter):
    """Drop transformers' "both max_new_tokens and max_length set" warning: Whisper's generate sets max_length
    from the model's config whatever the generation config says, so it came once per decoded batch (15 times in
    the example's evaluate stage), and max_new_tokens is the bound meant."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`max_new_tokens` will take precedence" not in record.getMessage()


logging.getLogger("transformers.generation.utils").addFilter(_BoundByNewTokens())


def window_seconds(longest_seconds: float, setting: float | str) -> int:
    """The window (whole seconds) a data set's recogniser reads: ``setting`` seconds, or with ``auto`` the
    longest training clip rounded up plus one second of margin, at most Whisper's 30."""
    seconds = math.ceil(longest_seconds) + 1 if setting == "auto" else int(math.ceil(float(setting)))
    return max(1, min(seconds, MAX_SECONDS))


def windowed(model: "WhisperForConditionalGeneration", seconds: int) -> "WhisperForConditionalGeneration":
    """``model`` cut (in place) to read ``seconds``-second windows: its encoder's positional table truncated."""
    import torch

    positions = seconds * POSITIONS_PER_SECOND
    encoder = model.model.encoder
    if positions > encoder.embed_positions.num_embeddings:
        raise ValueError(f"a {seconds} s window needs {positions} encoder positions, the model has "
                         f"{encoder.embed_positions.num_embeddings}")
    table = encoder.embed_positions.weight.detach()[:positions].clone()
    encoder.embed_positions = torch.nn.Embedding(positions, table.shape[1])
    encoder.embed_positions.weight.data.copy_(table)
    encoder.embed_positions.requires_grad_(False)  # Whisper's sinusoids are fixed
    model.config.max_source_positions = positions
    encoder.config.max_source_positions = positions
    return model


def encode_transcripts(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> "torch.Tensor":
    """Training targets: each transcript as ``<|notimestamps|> text <|endoftext|>`` token ids after the
    decoder's start token, padded with -100. The model's decoder input is these shifted right behind
    ``<|startoftranscript|>`` (``shift_tokens_right``), as in Hugging Face's Whisper fine-tuning recipe.

    Shape: -> (N, L) int64, L the longest (at most ``max_tokens``).

    Raises:
        ValueError: a transcript longer than ``max_tokens`` tokens (the decoder's 448 positions).
    """
    import torch

    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    rows = []
    for index, text in enumerate(texts):
        ids = tokenizer(" " + text.strip()).input_ids  # Whisper's transcripts start with a space
        if ids and ids[0] == start:
            ids = ids[1:]
        if len(ids) > max_tokens:
            raise ValueError(f"transcript {index + 1} has {len(ids)} tokens, more than the decoder's {max_tokens}")
        rows.append(torch.tensor(ids, dtype=torch.int64))
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=IGNORED)


def decoder_inputs(labels: "torch.Tensor", start_id: int, pad_id: int) -> "torch.Tensor":
    """Teacher forcing: the labels shifted one step right behind the start token, padding as ``pad_id``.
    Shape: (B, L) -> (B, L)."""
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    return shift_tokens_right(labels, pad_id, start_id)


def max_new_tokens(labels: "torch.Tensor", limit: int) -> int:
    """The decoding bound: three times the longest training target (room for the punctuation an unadapted model
    writes, "1, 6, 8."), at most the decoder's ``limit`` less the prompt. A fine-tuned model stops well before;
    one that loops stops here."""
    longest = int((labels != IGNORED).sum(dim=1).max()) if labels.numel() else 1
    return max(1, min(3 * longest, limit - 2))


def generate_ids(model: "WhisperForConditionalGeneration", features: "torch.Tensor | None" = None,
                 encoder_states: "torch.Tensor | None" = None, num_beams: int = 1,
                 new_tokens: int = 64) -> "torch.Tensor":
    """Token ids decoded (greedy, or beam search with ``num_beams``) from log-mel ``features`` (B, 80, T) or
    the encoder's ``encoder_states`` (B, T/2, D); Whisper's own generation rules (suppressed tokens, no
    timestamps) come from the model's generation config.

    Shape: -> (B, L) int64, ended by the end token and padded with it."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.num_beams, config.do_sample = new_tokens, num_beams, False
    config.max_length = None  # max_new_tokens bounds the search (both set: transformers warns on every call)
    with torch.inference_mode():
        if encoder_states is not None:
            return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
                                  generation_config=config)
        return model.generate(input_features=features, generation_config=config)


def decode_texts(tokenizer: Any, ids: "torch.Tensor") -> list[str]:
    """Generated (or label) ids as transcripts, special tokens and -100 padding dropped, outer spaces stripped."""
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = ids.masked_fill(ids == IGNORED, end).tolist()
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
