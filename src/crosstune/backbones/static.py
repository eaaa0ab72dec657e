"""Static token embeddings as a text backbone: one learnt vector per token, no attention, no context.

A different family from the transformer encoders: a sentence's features are the mean of its tokens' vectors
(:func:`crosstune.heads.registry.mean_pooling` over ``last_hidden_state``), so word order and context are lost.
``minilm-static`` is distilled from all-MiniLM-L6-v2 with model2vec (Tulkens and van Dongen, "Model2Vec:
Distill a Small Fast Model from any Sentence Transformer", 2024, https://github.com/MinishLab/model2vec):
each vocabulary token is run through the encoder alone and mean-pooled, the vectors are reduced by PCA to
256 dimensions and scaled by SIF weights (Arora et al., ICLR 2017), w(t) = a / (a + p(t)), a = 1e-4, p(t)
from Zipf's law on the token's rank.

:class:`StaticEmbeddingModel` is a Hugging Face ``PreTrainedModel`` registered with ``AutoConfig``/``AutoModel``
under ``model_type: crosstune-static``, so it saves, reloads, freezes (``embeddings``; it has no blocks, so
``freeze.depth`` is 0 or ``all``) and exports like any other text backbone. model2vec's own ``encode``
normalises the mean to unit length; here the head sees the plain mean (the two differ by a per-sentence scale).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from crosstune.errors import BackboneUnavailableError
from crosstune.io import atomic_directory

logger = logging.getLogger(__name__)

MODEL_TYPE = "crosstune-static"
DISTILLED_DIMENSIONS = 256  # model2vec's default PCA size
DIGEST_CHARACTERS = 12


class StaticEmbeddingConfig(PretrainedConfig):
    """A token vocabulary and the width of its vectors."""

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 2, hidden_size: int = 8, pad_token_id: int = 0, **kwargs: Any) -> None:
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size


class StaticEmbeddingModel(PreTrainedModel):
    """Token ids -> their vectors, unchanged by any neighbour.

    Shape:
        input_ids (B, T) -> last_hidden_state (B, T, hidden_size)
    """

    config_class = StaticEmbeddingConfig
    base_model_prefix = "static"

    def __init__(self, config: StaticEmbeddingConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList()  # no blocks: what freeze.depth counts is empty
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                **kwargs: Any) -> BaseModelOutput:
        hidden = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        states = [hidden]
        for layer in self.layers:  # empty; kept so that running "blocks start:stop" works as for encoders
            hidden = layer(hidden)
            states.append(hidden)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=tuple(states) if output_hidden_states else None)


def register_architecture() -> None:
    """Make ``AutoConfig``/``AutoModel`` know ``crosstune-static`` (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, StaticEmbeddingConfig)
        AutoModel.register(StaticEmbeddingConfig, StaticEmbeddingModel)
    except ValueError:  # already registered in this process
        pass


register_architecture()


def _directory_digest(directory: Path) -> str:
    import importlib.metadata

    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json"):
        digest.update((directory / name).read_bytes())
    digest.update(importlib.metadata.version("model2vec").encode())
    digest.update(str(DISTILLED_DIMENSIONS).encode())
    return digest.hexdigest()[:DIGEST_CHARACTERS]


def distilled_static_model(source: Path, name: str, cache_root: Path = Path(".cache/crosstune/backbones")) -> Path:
    """The cached Hugging Face directory of the static model distilled from the encoder directory ``source``,
    distilling it with model2vec on first use (written beside its target, then renamed).

    The directory name carries a digest of the source weights, its tokenizer and model2vec's version, so another
    source or version distils afresh.
    """
    try:
        from model2vec.distill import distill_from_model
    except ImportError as error:
        raise BackboneUnavailableError(
            f"backbone.name: {name!r} is distilled with model2vec; run `pip install model2vec==0.10.0 "
            f"skeletoken==0.6.1` (make install does this).") from error
    target = Path(cache_root) / f"{name}-{_directory_digest(source)}"
    if all((target / file).is_file() for file in ("config.json", "model.safetensors", "tokenizer.json")):
        return target
    from transformers import AutoModel as Encoder
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    started = time.perf_counter()
    encoder = Encoder.from_pretrained(str(source))
    static = distill_from_model(encoder, AutoTokenizer.from_pretrained(str(source), use_fast=True), device="cpu",
                                pca_dims=DISTILLED_DIMENSIONS, quantize_to="float32")
    vectors = torch.from_numpy(static.embedding.astype("float32"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=static.tokenizer, unk_token="[UNK]", pad_token="[PAD]")
    config = StaticEmbeddingConfig(vocab_size=vectors.shape[0], hidden_size=vectors.shape[1],
                                   pad_token_id=tokenizer.pad_token_id)
    model = StaticEmbeddingModel(config)
    with torch.no_grad():
        model.embeddings.weight.copy_(vectors)
    from crosstune.backbones.text import save_tokenizer

    with atomic_directory(target) as temporary:
        model.save_pretrained(temporary, safe_serialization=True)
        save_tokenizer(tokenizer, temporary)
    logger.info("distilled %s from %s with model2vec: %d tokens x %d in %.1f s -> %s", name, source,
                *vectors.shape, time.perf_counter() - started, target)
    return target
