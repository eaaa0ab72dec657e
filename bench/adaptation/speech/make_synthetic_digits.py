"""Synthetic spoken digits rendered with espeak-ng: the source domain of a synthetic -> real speech shift.

The real target is the Free Spoken Digit Dataset (FSDD: mono 16-bit 8 kHz wav, the English words
"zero".."nine", 6 speakers). Training on synthesized speech and testing on recorded speech follows
Lin et al. 2020, "Training keyword spotters with limited and synthesized speech data",
https://arxiv.org/abs/2002.01322.

    python bench/adaptation/speech/make_synthetic_digits.py --out data/synthetic_digits --sample-rate 8000

Needs the espeak-ng binary (Debian: ``apt-get install espeak-ng``). Each digit word is rendered once per
(voice, variant) pair of VOICES x VARIANTS (6 English dialects x 11 voice variants = 66 renderings per
digit, 660 in all); speaking rate and pitch come from the 3 x 3 grid RATES x PITCHES, assigned
round-robin over the pairs with a per-digit offset (``rate_and_pitch``), so every digit gets every
(rate, pitch) cell 7 or 8 times and no voice/variant is tied to one rate or pitch. Per rendering::

    espeak-ng -v <voice>+<variant> -s <rate> -p <pitch> -w <tmp.wav> <word>

then: mix to mono, trim leading/trailing silence (``trim_silence``: 10 ms frames, keep from the first to
the last frame whose RMS is within TRIM_DB of the loudest frame, plus PAD_S either side), resample to
``--sample-rate`` with ``scipy.signal.resample_poly`` at the exact rational ratio (8000/22050 = 160/441),
peak-normalise to PEAK_DBFS and write 16-bit PCM wav. Everything is deterministic: the same espeak-ng
build and arguments give byte-identical files.

Writes ``OUT/<digit>/<digit>_<voice>_<variant>_s<rate>_p<pitch>.wav`` (one folder per class, 0-9),
``OUT/manifest.csv`` (``path,label,voice,variant,rate,pitch``, relative paths, sorted) and ``OUT/SOURCE.md``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's own (formant) English voices; the mbrola ones (mb/...) need the separate mbrola binary.
VOICES: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
RATES: tuple[int, ...] = (130, 160, 190)  # words per minute (-s)
PITCHES: tuple[int, ...] = (35, 50, 65)  # 0-99 (-p)

FRAME_S = 0.010  # trimming frame length
TRIM_DB = -40.0  # a frame is speech if its RMS is within 40 dB of the loudest frame's
PAD_S = 0.020  # silence kept before the first and after the last speech frame
PEAK_DBFS = -1.0
COMMAND = "espeak-ng -v <voice>+<variant> -s <rate> -p <pitch> -w <tmp.wav> <word>"


def rate_and_pitch(digit: int, voice_index: int, variant_index: int) -> tuple[int, int]:
    """The (rate, pitch) of one rendering: cell (k + digit) mod 9 of RATES x PITCHES, k the pair's index."""
    cell = (voice_index * len(VARIANTS) + variant_index + digit) % (len(RATES) * len(PITCHES))
    return RATES[cell // len(PITCHES)], PITCHES[cell % len(PITCHES)]


def grid() -> list[tuple[int, str, str, int, int]]:
    """Every rendering as (digit, voice, variant, rate, pitch), in a fixed order."""
    return [(digit, voice, variant, *rate_and_pitch(digit, i, j))
            for digit in range(len(WORDS))
            for i, voice in enumerate(VOICES)
            for j, variant in enumerate(VARIANTS)]


def espeak_version(binary: str) -> str:
    """The first line of ``espeak-ng --version``, e.g. 'eSpeak NG text-to-speech: 1.51  Data at: ...'."""
    line = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return line.split("Data at:")[0].strip().removeprefix("eSpeak NG text-to-speech:").strip()


def debian_package_version() -> str | None:
    """The installed Debian package version of espeak-ng, if dpkg knows it."""
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "espeak-ng"], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def render(binary: str, word: str, voice: str, variant: str, rate: int, pitch: int,
           tmp: Path) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of ``word`` as float64 mono samples and its sample rate."""
    import soundfile as sf

    command = [binary, "-v", f"{voice}+{variant}", "-s", str(rate), "-p", str(pitch), "-w", str(tmp), word]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not tmp.is_file():
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip() or result.returncode}")
    audio, rate_hz = sf.read(tmp, dtype="float64", always_2d=True)
    return audio.mean(axis=1), int(rate_hz)


def trim_silence(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    """Cut leading/trailing silence: keep the first to last frame within TRIM_DB of the loudest, +-PAD_S."""
    frame = max(1, round(FRAME_S * rate_hz))
    count = -(-len(audio) // frame)
    frames = np.zeros(count * frame)
    frames[:len(audio)] = audio
    rms = np.sqrt(np.mean(frames.reshape(count, frame) ** 2, axis=1))
    if rms.max() <= 0.0:
        raise ValueError("espeak-ng produced silence")
    loud = np.flatnonzero(rms >= rms.max() * 10.0 ** (TRIM_DB / 20.0))
    pad = round(PAD_S * rate_hz)
    start = max(0, loud[0] * frame - pad)
    stop = min(len(audio), (loud[-1] + 1) * frame + pad)
    return audio[start:stop]


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling at the exact ratio rate_out/rate_in in lowest terms (8000/22050 = 160/441)."""
    if rate_in == rate_out:
        return audio
    from scipy.signal import resample_poly

    ratio = Fraction(rate_out, rate_in)
    return resample_poly(audio, ratio.numerator, ratio.denominator)


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    """Scale so the largest absolute sample is PEAK_DBFS (-1 dBFS = 0.891 of full scale)."""
    return audio * (10.0 ** (PEAK_DBFS / 20.0) / np.abs(audio).max())


def file_name(digit: int, voice: str, variant: str, rate: int, pitch: int) -> str:
    return f"{digit}_{voice}_{variant}_s{rate}_p{pitch}.wav"


def write_source(out: Path, version: str, package: str | None, sample_rate: int, count: int,
                 durations: np.ndarray) -> None:
    built = f"espeak-ng {version}" + (f" (Debian package espeak-ng {package})" if package else "")
    text = f"""# Synthetic spoken digits (espeak-ng)

- What: {count} renderings of the English words "zero".."nine" ({count // len(WORDS)} per digit), mono 16-bit
  PCM wav at {sample_rate} Hz, one folder per class (`0/`..`9/`), listed in `manifest.csv`
  (`path,label,voice,variant,rate,pitch`). The synthetic source domain for the real Free Spoken Digit Dataset
  (Lin et al. 2020, "Training keyword spotters with limited and synthesized speech data",
  https://arxiv.org/abs/2002.01322).
- Generated with {built}; the audio is synthetic speech produced by
  `bench/adaptation/speech/make_synthetic_digits.py`:

  ```bash
  python bench/adaptation/speech/make_synthetic_digits.py --out {out.as_posix()} --sample-rate {sample_rate}
  ```

  which runs, per rendering, `{COMMAND}`.
- Grid: voices {", ".join(VOICES)}; variants {", ".join("+" + v for v in VARIANTS)}; every (voice, variant)
  pair once per digit; rate (-s, wpm) and pitch (-p) from {list(RATES)} x {list(PITCHES)}, cell
  (pair index + digit) mod 9, so each digit has every (rate, pitch) cell 7 or 8 times.
- Processing: mixed to mono; leading/trailing silence trimmed (10 ms frames; kept from the first to the last
  frame whose RMS is within {abs(TRIM_DB):g} dB of the loudest frame, plus {PAD_S * 1000:g} ms either side);
  resampled from espeak-ng's 22050 Hz with `scipy.signal.resample_poly` at the exact ratio
  ({Fraction(sample_rate, 22050)}); peak-normalised to {PEAK_DBFS:g} dBFS; written with `soundfile` as PCM_16.
- Durations (s): min {durations.min():.3f}, median {np.median(durations):.3f}, max {durations.max():.3f}.
- Deterministic: the same espeak-ng build and arguments give byte-identical files.
"""
    (out / "SOURCE.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/synthetic_digits"), help="output folder")
    parser.add_argument("--sample-rate", type=int, default=8000, help="output sample rate in Hz (FSDD: 8000)")
    args = parser.parse_args(argv)

    binary = shutil.which("espeak-ng")
    if binary is None:
        print("error: espeak-ng not found; install it with `apt-get install espeak-ng`", file=sys.stderr)
        return 1
    if args.sample_rate <= 0:
        parser.error("--sample-rate must be positive")

    import soundfile as sf
    from tqdm import tqdm

    out: Path = args.out
    renderings = grid()
    rows: list[dict[str, str | int]] = []
    durations: list[float] = []
    with tempfile.TemporaryDirectory(prefix="espeak-digits-") as scratch:
        tmp = Path(scratch) / "render.wav"
        for digit, voice, variant, rate, pitch in tqdm(renderings, desc="espeak-ng digits", unit="wav"):
            audio, rate_hz = render(binary, WORDS[digit], voice, variant, rate, pitch, tmp)
            audio = peak_normalise(resample(trim_silence(audio, rate_hz), rate_hz, args.sample_rate))
            relative = Path(str(digit)) / file_name(digit, voice, variant, rate, pitch)
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            sf.write(out / relative, audio, args.sample_rate, subtype="PCM_16", format="WAV")
            rows.append({"path": relative.as_posix(), "label": digit, "voice": voice, "variant": variant,
                         "rate": rate, "pitch": pitch})
            durations.append(len(audio) / args.sample_rate)

    rows.sort(key=lambda row: str(row["path"]))
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "voice", "variant", "rate", "pitch"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    seconds = np.asarray(durations)
    write_source(out, espeak_version(binary), debian_package_version(), args.sample_rate, len(rows), seconds)
    print(f"{len(rows)} files in {out}; duration s min {seconds.min():.3f} median {np.median(seconds):.3f} "
          f"max {seconds.max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
