"""crosstune: reproducible cross-domain fine-tuning of pretrained models as a DVC pipeline.

Heavy libraries (torch, transformers) are imported lazily by the modules that need them,
so `import crosstune` and the stages that do not train stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from crosstune.inference.predictor import Predictor


def load(model_dir: str) -> "Predictor":
    """Load a fine-tuned crosstune model directory as a ready predictor.

    Example:
        >>> predictor = crosstune.load("models/finetuned")
        >>> predictor.predict(["This drug saved my life"])
    """
    from crosstune.inference.predictor import Predictor

    return Predictor.from_directory(model_dir)
