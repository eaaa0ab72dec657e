"""Transcribing a whole split: the encoder once per batch, then the decoder's search, in the split's order.

Every recording of a split is padded to the recogniser's window, so batches cost the same whatever their
clips; decoding stops at each batch's last end token (or at the window's ``max_new_tokens``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from crosstune.transfer_model.speech_recognition import SpeechRecognitionModel


def transcribe_split(model: "SpeechRecognitionModel", split: Any, batching: Any, device: str,
                     level: Any = None, num_beams: int = 1, batch_size: int | None = None,
                     loss_fn: "torch.nn.Module | None" = None) -> tuple[list[str], float | None]:
    """(transcripts of every row of ``split``, in order; the teacher-forced loss per target token when
    ``loss_fn`` is given and the split has transcripts). ``level``: the split holds the cached prefix's
    outputs at that level (None: raw recordings)."""
    import torch
    from tqdm.auto import tqdm

    from crosstune.freezing.policy import set_train_mode
    from crosstune.transcription.recogniser import IGNORED, decode_texts, generate_ids

    was_training = model.training
    model.eval()
    texts: list[str | None] = [None] * len(split)
    new_tokens = int(model.recogniser.generation_config.max_new_tokens or 64)
    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for batch in tqdm(batching.evaluate(split, batch_size), desc="transcribe", unit="batch", mininterval=2.0,
                          leave=False, disable=len(split) < 200):
            batch = batch.to(device)
            inputs = dict(batch.inputs)
            labels = inputs.get("decoder_labels")
            states = model.encoder_states(level, **inputs)
            if loss_fn is not None and labels is not None and bool((labels != IGNORED).any()):
                tokens = int((labels != IGNORED).sum())
                total_loss += float(loss_fn(model.decode(states, labels).float(), labels)) * tokens
                total_tokens += tokens
            ids = generate_ids(model.recogniser, encoder_states=states, num_beams=num_beams, new_tokens=new_tokens)
            for index, text in zip(batch.indices.tolist(), decode_texts(model.tokenizer, ids.cpu())):
                texts[index] = text
    if was_training:
        set_train_mode(model)
    return [text or "" for text in texts], (total_loss / total_tokens if total_tokens else None)


def reference_texts(model: "SpeechRecognitionModel", split: Any) -> list[str]:
    """A split's transcripts, decoded from its encoded token ids."""
    from crosstune.transcription.recogniser import decode_texts

    return decode_texts(model.tokenizer, split.labels)
