"""Whisper's 30-second window vs the clip's own frames: is running the encoder over a short clip's own
frames as accurate as the padded input, and how much faster?

The ``whisper-tiny-en`` backbone runs over the clip's own frames (its positional table cut to the clip's
length, as CTranslate2 and faster-whisper allow). Hugging Face's ``WhisperEncoder.forward`` insists on
3,000 mel frames: a 1 s clip padded with 29 s of silence. This script extracts mean-pooled features both
ways from the same speaker-disjoint sample of the Free Spoken Digit Dataset (``data/fsdd``), fits the
same logistic regression on each (train speakers) and scores the test speakers; it times the encoder per
clip. Padded features are pooled over the clip's own positions (the first 50) and over all 1,500.

    .venv/bin/python bench/speech/whisper_window.py --per-digit-speaker 6 --out bench/speech/whisper_window.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from crosstune.backbones.audio import build_audio_backbone
from crosstune.data.audio import AudioBatcher, decode_audio

ROOT = Path(__file__).resolve().parents[2]


def sample(table: str, per_digit_speaker: int) -> pd.DataFrame:
    frame = pd.read_csv(ROOT / "data" / "fsdd" / table)
    frame = frame[frame["index"] < per_digit_speaker]
    frame["audio"] = [str(ROOT / "data" / "fsdd" / path) for path in frame["audio"]]
    return frame.reset_index(drop=True)


def features(backbone: torch.nn.Module, frames: torch.Tensor, padded: bool, batch_size: int) -> tuple[dict, float]:
    """Mean-pooled encoder outputs; ``padded``: through WhisperEncoder.forward on 3,000 frames."""
    encoder = backbone.body
    own = (frames.shape[-1] + 1) // 2
    pooled: dict[str, list[np.ndarray]] = {"clip_positions": []} if not padded else {"clip_positions": [],
                                                                                       "all_positions": []}
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(frames), batch_size):
            batch = frames[start : start + batch_size]
            if padded:
                # Whisper's own padding: log-mel of silence, i.e. the normalised floor value of each clip
                full = torch.nn.functional.pad(batch, (0, 3000 - batch.shape[-1]), value=0.0)
                full[..., batch.shape[-1]:] = batch.amin(dim=(1, 2), keepdim=True)
                hidden = encoder(full).last_hidden_state
                pooled["clip_positions"].append(hidden[:, :own].mean(1).numpy())
                pooled["all_positions"].append(hidden.mean(1).numpy())
            else:
                pooled["clip_positions"].append(backbone.forward_features(batch).numpy())
    seconds = (time.perf_counter() - started) / len(frames)
    return {key: np.concatenate(value) for key, value in pooled.items()}, seconds


def probe(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=0))
    model.fit(train, train_labels)
    return float((model.predict(test) == test_labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-digit-speaker", type=int, default=6, help="recordings per digit and speaker")
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "speech" / "whisper_window.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = build_audio_backbone("whisper-tiny-en", "DEFAULT", 0, int(args.clip_seconds * 16000), "center").eval()
    batcher = AudioBatcher(backbone.preprocessing)
    splits = {name: sample(f"digits_{name}.csv", args.per_digit_speaker) for name in ("train", "test")}
    frames = {name: batcher(decode_audio(frame["audio"].tolist(), 16000, backbone.preprocessing.clip_samples,
                                         "center")) for name, frame in splits.items()}
    labels = {name: frame["digit"].to_numpy() for name, frame in splits.items()}
    results: dict[str, object] = {"train_clips": len(labels["train"]), "test_clips": len(labels["test"]),
                                  "clip_seconds": args.clip_seconds, "threads": torch.get_num_threads()}
    for padded in (False, True):
        extracted = {name: features(backbone, frames[name], padded, args.batch_size) for name in frames}
        per_clip = float(np.mean([seconds for _, seconds in extracted.values()]))
        results[f"{'padded' if padded else 'own'}_seconds_per_clip"] = round(per_clip, 5)
        for pooling in extracted["train"][0]:
            accuracy = probe(extracted["train"][0][pooling], labels["train"], extracted["test"][0][pooling],
                             labels["test"])
            results[f"{'padded' if padded else 'own'}_{pooling}_accuracy"] = round(accuracy, 4)
    results["speedup"] = round(results["padded_seconds_per_clip"] / results["own_seconds_per_clip"], 2)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
