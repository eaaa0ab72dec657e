"""The report's detection sections: the per-class table and the worst test images with their boxes drawn."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

WORST_SHOWN = 6


def per_class_html(test: dict[str, Any]) -> str:
    """Each class's AP (IoU 0.50:0.95), AP at IoU 0.5, counting error and bias per image, and true boxes
    (eval.json's ``<class>_ap`` ...)."""
    from crosstune.reporting.wording import rows_table_html

    classes = [key[: -len("_support")] for key in test if key.endswith("_support")]
    rows = {name: [f"{float(test[f'{name}_ap']):.3f}", f"{float(test[f'{name}_ap_50']):.3f}",
                   f"{float(test[f'{name}_count_mae']):.2f}", f"{float(test[f'{name}_count_bias']):+.2f}",
                   str(int(test[f"{name}_support"]))] for name in classes}
    return rows_table_html(
        "Per class", "Average precision over IoU 0.50:0.95 (COCO's measure) and at IoU 0.5 (Pascal VOC's), higher is "
        "better; the counting error is the mean absolute difference between the boxes found (score at least 0.5) and "
        "the true ones per test image; a negative bias means the detector undercounts.",
        ["class", "AP", "AP@.5", "count error", "count bias", "true boxes"], rows)


def worst_images_html(predictions: Path, shown: int = WORST_SHOWN) -> str:
    """The test images with the most missed and spurious boxes (evaluate's table is sorted so), drawn inline."""
    import pandas as pd
    import torch

    from crosstune.detection.annotations import parse_boxes_json
    from crosstune.detection.drawing import draw_boxes
    from crosstune.detection.evaluation import DRAW_THRESHOLD

    if not predictions.is_file():
        return ""
    frame = pd.read_csv(predictions, dtype={"image": str, "label": str, "predicted": str}, keep_default_na=False)
    classes = sorted({column[len("true_"):] for column in frame.columns if column.startswith("true_")})
    index = {name: position + 1 for position, name in enumerate(classes)}
    figures = []
    for row in frame.head(shown).itertuples(index=False):
        if not Path(row.image).is_file():
            continue
        true_boxes = parse_boxes_json(row.label)
        truth = {"boxes": torch.tensor([box.corners() for box in true_boxes]).reshape(-1, 4),
                 "labels": torch.tensor([index.get(box.label, 0) for box in true_boxes], dtype=torch.int64)}
        found_boxes = json.loads(row.predicted)
        found = {"boxes": torch.tensor([item["box"] for item in found_boxes]).reshape(-1, 4),
                 "labels": torch.tensor([index.get(item["label"], 0) for item in found_boxes], dtype=torch.int64),
                 "scores": torch.tensor([item["score"] for item in found_boxes], dtype=torch.float32)}
        picture = draw_boxes(row.image, truth, found, classes, DRAW_THRESHOLD)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        figures.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(Path(row.image).name)}"'
                       f' style="max-width:100%"><figcaption>{html.escape(Path(row.image).name)}: {int(row.errors)} '
                       f"wrong boxes</figcaption></figure>")
    if not figures:
        return ""
    return ("<h2>Worst test images</h2>\n<p>The test images with the most missed plus spurious boxes, worst first: "
            "true boxes thin in their class's colour (red: no prediction of that class overlaps it at IoU 0.5), "
            "predictions scoring at least 0.5 thick, with class and score.</p>\n" + "\n".join(figures))
