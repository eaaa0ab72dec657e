"""Write the speech-recognition example: connected-digit utterances (like phone numbers) built from FSDD.

Each utterance is 3 to 7 recordings of one speaker from ``data/fsdd/recordings`` (8 kHz, trimmed to
near-minimal silence), joined by 0.05-0.35 s of silence: a telephone-band, accented domain for a recogniser
trained on 16 kHz English. Training speakers jackson, nicolas, theo and yweweler; george (Greek) and lucas
(German) are heard only in the test table. Transcripts are the digits as words ("four one five"). Everything
follows from ``SEED``, so the same recordings give byte-identical files:

    python data/make_digit_strings.py [--out data/digit_strings] [--train-per-speaker 100] [--test-per-speaker 60]

writes ``<out>/{train,test}.csv`` (columns ``audio``, ``transcript``, ``speaker``) and ``<out>/clips/*.wav``.
The recordings keep FSDD's licence (CC BY-SA 4.0, ``data/README.md``); so do these derived clips.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile

FSDD = Path(__file__).resolve().parent / "fsdd" / "recordings"
SEED = 20261207
SAMPLE_RATE = 8000
TRAIN_SPEAKERS = ("jackson", "nicolas", "theo", "yweweler")
TEST_SPEAKERS = ("george", "lucas")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MIN_DIGITS, MAX_DIGITS = 3, 7
MIN_PAUSE, MAX_PAUSE = 0.05, 0.35  # seconds of silence between digits
EDGE_PAUSE = 0.1  # seconds of silence before the first digit and after the last


def recordings_by_speaker(root: Path = FSDD) -> dict[str, dict[int, list[Path]]]:
    """speaker -> digit -> that speaker's recordings of the digit, sorted by name."""
    table: dict[str, dict[int, list[Path]]] = {}
    for path in sorted(root.glob("*.wav")):
        digit, speaker, _ = path.stem.split("_")
        table.setdefault(speaker, {}).setdefault(int(digit), []).append(path)
    return table


def utterance(rng: np.random.Generator, recordings: dict[int, list[Path]]) -> tuple[np.ndarray, list[int]]:
    """One seeded utterance of a speaker: its int16 samples at 8 kHz and the digits said."""
    digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1)))]
    edge = np.zeros(int(EDGE_PAUSE * SAMPLE_RATE), dtype=np.int16)
    pieces = [edge]
    for position, digit in enumerate(digits):
        choices = recordings[digit]
        samples, rate = soundfile.read(choices[int(rng.integers(len(choices)))], dtype="int16")
        if rate != SAMPLE_RATE or samples.ndim != 1:
            raise ValueError(f"{choices[0].parent}: expected mono {SAMPLE_RATE} Hz recordings, found {rate} Hz")
        if position:
            pieces.append(np.zeros(int(rng.uniform(MIN_PAUSE, MAX_PAUSE) * SAMPLE_RATE), dtype=np.int16))
        pieces.append(samples)
    pieces.append(edge)
    return np.concatenate(pieces), digits


def build(out: Path, train_per_speaker: int, test_per_speaker: int, seed: int = SEED) -> dict[str, int]:
    """Write the tables and clips into ``out`` (swapped in whole: an interrupted run leaves the old one)."""
    recordings = recordings_by_speaker()
    missing = [s for s in TRAIN_SPEAKERS + TEST_SPEAKERS if s not in recordings]
    if missing:
        raise SystemExit(f"{FSDD}: no recordings of {missing}; restore data/fsdd from git")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    (staging / "clips").mkdir()
    counts = {}
    for split, speakers, per_speaker in (("train", TRAIN_SPEAKERS, train_per_speaker),
                                         ("test", TEST_SPEAKERS, test_per_speaker)):
        rows = []
        for speaker in speakers:
            rng = np.random.default_rng([seed, sum(map(ord, speaker)), len(split)])
            for index in range(per_speaker):
                samples, digits = utterance(rng, recordings[speaker])
                name = f"{speaker}_{index:03d}_{''.join(map(str, digits))}.wav"
                soundfile.write(staging / "clips" / name, samples, SAMPLE_RATE, subtype="PCM_16")
                rows.append({"audio": f"clips/{name}", "transcript": " ".join(WORDS[d] for d in digits),
                             "speaker": speaker})
        with open(staging / f"{split}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["audio", "transcript", "speaker"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = len(rows)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "digit_strings"))
    parser.add_argument("--train-per-speaker", type=int, default=100)
    parser.add_argument("--test-per-speaker", type=int, default=60)
    args = parser.parse_args()
    counts = build(Path(args.out), args.train_per_speaker, args.test_per_speaker)
    print(f"wrote {counts['train']} training and {counts['test']} test utterances to {args.out}")


if __name__ == "__main__":
    main()
