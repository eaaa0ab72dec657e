"""The transcription task's model: a whole Whisper recogniser behind the :class:`TransferModel` interface.

There is no new head: the pretrained decoder is the head and the encoder the backbone, so the stages' freezing
(``freeze.depth`` counts the encoder's blocks; ``freeze.patterns`` reach the decoder's), the frozen-prefix cache
(the encoder's outputs, when the whole encoder is frozen), LoRA, layer-wise rates and bf16 work on it as on any
other model. Training is teacher-forced (Sutskever et al. 2014, https://arxiv.org/abs/1409.3215): the batch
carries the target ids (``decoder_labels``), the decoder reads them shifted right and the loss is the
cross-entropy of each next token, :math:`-\\sum_t \\log p(y_t \\mid y_{<t}, x)`. Saved as a stock
``WhisperForConditionalGeneration`` directory (Hugging Face names, tokenizer, feature extractor, generation
config) with crosstune's fields under ``config.json``'s ``crosstune`` key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crosstune.transfer_model.modules import PrefixLevel, TransferModel

GENERATION_DEFAULTS = {"num_beams": 1}


class SpeechRecognitionModel(TransferModel):
    """Whisper's encoder (the backbone) and decoder (the head), trained on (features, transcript ids).

    Shape:
        input_features (B, 80, T) log-mel, decoder_labels (B, L) ids (-100 padding) -> logits (B, L, V)
    """

    modality = "audio"
    chosen_by_task = True  # built for prepare.task: transcription, never as the audio modality's model
    prefix_passthrough = ("decoder_labels",)
    new_head = False
    takes_lora = True  # adapters on the encoder's attention (freeze.lora_targets: [q_proj, v_proj]); the decoder trains

    def __init__(self, recogniser: nn.Module, spec: dict[str, Any], preprocessing: Any) -> None:
        nn.Module.__init__(self)
        self.recogniser = recogniser
        self.spec = dict(spec)
        self.preprocessing = preprocessing  # crosstune.backbones.audio_features.AudioPreprocessing of the window
        self.tokenizer: Any = None  # the recogniser's WhisperTokenizer, set by whoever loads it (not a module)

    @property
    def backbone(self) -> nn.Module:  # type: ignore[override]
        return self.recogniser.model.encoder

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return self.recogniser.model.decoder  # the output projection is tied to its token embeddings

    def _start_and_pad(self) -> tuple[int, int]:
        config = self.recogniser.config
        return int(config.decoder_start_token_id), int(config.pad_token_id)

    def encode(self, input_features: torch.Tensor) -> torch.Tensor:
        """The encoder's output states. Shape: (B, 80, T) -> (B, T / 2, D)."""
        return self.recogniser.model.encoder(input_features).last_hidden_state

    def decode(self, encoder_states: torch.Tensor, decoder_labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits. Shape: (B, T', D), (B, L) -> (B, L, V)."""
        from crosstune.transcription.recogniser import decoder_inputs

        start, pad = self._start_and_pad()
        hidden = self.recogniser.model.decoder(input_ids=decoder_inputs(decoder_labels, start, pad),
                                               encoder_hidden_states=encoder_states).last_hidden_state
        return self.recogniser.proj_out(hidden)

    def features(self, input_features: torch.Tensor, decoder_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(input_features)

    def forward(self, input_features: torch.Tensor, decoder_labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.decode(self.encode(input_features), decoder_labels)

    def forward_parts(self, level: PrefixLevel | None, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's states, next-token logits)."""
        labels = inputs.pop("decoder_labels")
        states = self.encode(**inputs) if level is None else self._encoder_from_prefix(level, **inputs)
        return states, self.decode(states, labels)

    def encoder_states(self, level: PrefixLevel | None, **inputs: torch.Tensor) -> torch.Tensor:
        """The encoder's output for a batch of raw inputs or cached prefix outputs (what decoding reads)."""
        inputs.pop("decoder_labels", None)
        return self.encode(**inputs) if level is None else self._encoder_from_prefix(level, **inputs)

    def stem_modules(self) -> list[nn.Module]:
        encoder = self.recogniser.model.encoder
        return [encoder.conv1, encoder.conv2, encoder.embed_positions]

    def block_modules(self) -> list[list[nn.Module]]:
        encoder = self.recogniser.model.encoder
        layers = list(encoder.layers)
        return [[layer] for layer in layers[:-1]] + [[layers[-1], encoder.layer_norm]]

    def _stem(self, input_features: torch.Tensor) -> torch.Tensor:
        """What ``WhisperEncoder.forward`` does before its layers (dropout 0 in Whisper's config)."""
        encoder = self.recogniser.model.encoder
        hidden = nn.functional.gelu(encoder.conv2(nn.functional.gelu(encoder.conv1(input_features)))).permute(0, 2, 1)
        return nn.functional.dropout(hidden + encoder.embed_positions.weight, p=encoder.dropout,
                                     training=encoder.training)

    def prefix_outputs(self, level: PrefixLevel, input_features: torch.Tensor,  # type: ignore[override]
                       decoder_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The frozen encoder's output (level "all") or its hidden states after ``level`` blocks."""
        if level == "all" or level == len(self.block_modules()):
            return {"encoder_states": self.encode(input_features)}
        hidden = self._stem(input_features)
        for layer in list(self.recogniser.model.encoder.layers)[:int(level)]:
            hidden = layer(hidden, None)
        return {"encoder_hidden": hidden}

    def _encoder_from_prefix(self, level: PrefixLevel, encoder_states: torch.Tensor | None = None,
                             encoder_hidden: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_states is not None:
            return encoder_states
        encoder = self.recogniser.model.encoder
        hidden = encoder_hidden
        for layer in list(encoder.layers)[int(level):]:
            hidden = layer(hidden, None)
        return encoder.layer_norm(hidden)

    def features_from_prefix(self, level: PrefixLevel, **cached: torch.Tensor) -> torch.Tensor:
        cached.pop("decoder_labels", None)
        return self._encoder_from_prefix(level, **cached)

    def forward_from_prefix(self, level: PrefixLevel, **cached: torch.Tensor) -> torch.Tensor:
        labels = cached.pop("decoder_labels")
        return self.decode(self._encoder_from_prefix(level, **cached), labels)

    def backbone_entry(self) -> dict[str, Any]:
        return {}

    def onnx_input_names(self) -> tuple[str, ...]:
        raise NotImplementedError("ONNX export of the encoder-decoder is not supported; export head.type hf")
