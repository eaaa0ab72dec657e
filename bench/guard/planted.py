"""The planted negative-transfer case of the guard's benchmark and its test: pretrained weights that are
pretrained-like in every statistic but arranged wrongly, so starting from them is worse than a random start."""

from __future__ import annotations

from pathlib import Path

import torch


def shuffle_across_layers(source_dir: str, out: Path, seed: int = 0) -> str:
    """The planted negative-transfer case: MiniLM's own encoder weights, each tensor moved to another
    layer's (or another module's) slot of the same shape, so every statistic of the weights is
    pretrained-like but their arrangement is not."""
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(source_dir), AutoTokenizer.from_pretrained(source_dir)
    state = model.state_dict()
    groups: dict[tuple[int, ...], list[str]] = {}
    for key, value in state.items():
        if key.startswith("encoder.") and value.is_floating_point():
            groups.setdefault(tuple(value.shape), []).append(key)
    generator = torch.Generator().manual_seed(seed)
    shuffled = dict(state)
    for keys in groups.values():
        for key, position in zip(keys, torch.randperm(len(keys), generator=generator).tolist()):
            shuffled[key] = state[keys[position]].clone()
    model.load_state_dict(shuffled)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
