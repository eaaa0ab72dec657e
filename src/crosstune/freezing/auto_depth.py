"""``freeze.depth: auto``: how deep to freeze, from the backbone's transferability after each block.

The backbone stage scores the pooled features the backbone gives after its stem (or embeddings), s_0, and after
each block K, s_K, with LogME (You et al., ICML 2021) on the backbone-selection sample (one forward pass yields
them all, ``crosstune.selection.candidates.block_scores``). Freezing the bottom K blocks
keeps s_K's features as the input of what trains, so the curve says how far the pretrained computation carries
towards the target labels (Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS
2014, https://arxiv.org/abs/1411.1792: lower layers general, upper layers specific to the source task).

The rule, with gains over the stem g_K = s_K - s_0 and the best gain G = max_K g_K:

    depth = 0                                   if G <= min_gain  (the pretrained blocks add little for
                                                                   these labels: let every block adapt)
    depth = min{K : g_K >= fraction * G}        otherwise         (freeze the blocks that deliver most of
                                                                   the gain; fine-tune the rest)

``fraction`` and ``min_gain`` are :data:`FRACTION` and :data:`MIN_GAIN`, chosen on bench/freeze's first seed of four
tasks (text, fashion, speech, speakers) and then checked on more seeds and on two held-out tasks (topic, digits):
how far the choice lands from the best swept depth, in points of the test metric, is in bench/freeze/README.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from crosstune.errors import ArtifactError

BLOCK_SCORES = "block_scores.json"  # in the backbone stage's directory (crosstune.pipeline.backbone)
FRACTION = 0.5  # freeze up to the first block that delivers half of the best gain over the stem
MIN_GAIN = 0.1  # score units (LogME: nats per example and label column); at or below it nothing is frozen


@dataclass(frozen=True)
class DepthRecommendation:
    """The recommended freeze depth, the per-block scores it came from, and why, in words."""

    depth: int
    score: str
    scores: tuple[float | None, ...]
    reason: str

    def as_metrics(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"depth_recommended": self.depth, "block_score": self.score}
        flat.update({f"block_{index}_{self.score}": value for index, value in enumerate(self.scores)})
        return flat


def recommend_depth(scores: Sequence[float | None], score: str = "logme", fraction: float = FRACTION,
                    min_gain: float = MIN_GAIN) -> DepthRecommendation:
    """The rule of the module docstring on ``scores`` (index 0: after the stem; K: after block K; None: not
    finite, never chosen)."""
    if not scores or scores[0] is None:
        return DepthRecommendation(0, score, tuple(scores), "no finite score for the stem's features: nothing frozen")
    gains = [None if value is None else value - scores[0] for value in scores]
    best = max((gain for gain in gains[1:] if gain is not None), default=0.0)
    if best <= min_gain:
        return DepthRecommendation(0, score, tuple(scores), f"the blocks improve {score} by at most {best:.3g} over "
                                   f"the stem (<= {min_gain}): the pretrained features barely fit these labels, "
                                   f"so every block fine-tunes")
    depth = next(index for index, gain in enumerate(gains) if index and gain is not None and gain >= fraction * best)
    return DepthRecommendation(depth, score, tuple(scores), f"block {depth} of {len(scores) - 1} reaches "
                               f"{gains[depth] / best:.0%} of the best {score} gain over the stem ({best:.3g}): freeze "
                               f"the stem and blocks 1-{depth}, fine-tune the rest")


def read_block_scores(backbone_dir: str | Path) -> dict[str, Any] | None:
    """The backbone stage's per-block scores, or None for a directory saved before they were written."""
    path = Path(backbone_dir) / BLOCK_SCORES
    if not path.is_file():
        return None
    try:
        blocks = json.loads(path.read_text(encoding="utf-8"))
        return {"score": str(blocks["score"]), "scores": [None if value is None else float(value)
                                                          for value in blocks["scores"]]}
    except (ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"{path}: unreadable ({type(error).__name__}: {error}); rebuild it with "
                            f"`dvc repro -f backbone`.") from error
