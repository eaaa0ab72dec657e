"""The converted Whisper tiny.en against CTranslate2's own ``generate`` on many clips: how many greedy transcripts
are token-for-token identical, and how far the next-token logits along CTranslate2's transcripts are apart.

The test suite checks a dozen clips (``tests/test_transcription.py``); this runs every clip of the example's test
table and the first ``--train`` of its training table, at Whisper's 30-second window (both models as released),
and writes ``bench/asr/conversion.json``:

    .venv/bin/python bench/asr/conversion.py [--train 80]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=80, help="training clips checked besides the test table")
    parser.add_argument("--out", default=str(Path(__file__).with_name("conversion.json")))
    args = parser.parse_args()

    import ctranslate2
    import numpy as np
    import pandas as pd
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from crosstune.backbones.whisper_weights import converted_whisper_model, packaged_whisper_dir
    from crosstune.data.audio import read_audio, resample

    data = REPO / "data" / "digit_strings"
    if not (data / "train.csv").is_file():
        subprocess.run([sys.executable, str(REPO / "data" / "make_digit_strings.py")], check=True)
    table = pd.concat([pd.read_csv(data / "test.csv"), pd.read_csv(data / "train.csv").head(args.train)])
    directory = converted_whisper_model()
    model = WhisperForConditionalGeneration.from_pretrained(directory).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(directory)
    reference = ctranslate2.models.Whisper(str(packaged_whisper_dir()), device="cpu", compute_type="float32")
    prompt = [model.generation_config.decoder_start_token_id, model.generation_config.no_timestamps_token_id]
    identical, differences, mismatches = 0, [], []
    torch.set_num_threads(2)
    for start in range(0, len(table), BATCH):
        rows = table.iloc[start:start + BATCH]
        waves = [resample(*read_audio(data / path), 16000) for path in rows["audio"]]
        features = extractor(waves, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
        results = reference.generate(ctranslate2.StorageView.from_array(features), [prompt] * len(rows),
                                     beam_size=1, max_length=40, return_logits_vocab=True)
        with torch.inference_mode():
            ours = model.generate(torch.from_numpy(features), max_new_tokens=38)
        for row, result in enumerate(results):
            expected = result.sequences_ids[0]
            generated = [token for token in ours[row].tolist() if token != model.config.eos_token_id]
            if generated == expected:
                identical += 1
            else:
                mismatches.append({"audio": rows["audio"].iloc[row], "ctranslate2": expected, "converted": generated})
            with torch.inference_mode():
                sequence = torch.tensor([prompt + expected])
                logits = model(input_features=torch.from_numpy(features[row:row + 1]),
                               decoder_input_ids=sequence).logits[0]
            for step, theirs in enumerate(result.logits[0]):
                theirs = np.asarray(theirs).reshape(-1)
                allowed = theirs > -1e30  # CTranslate2 reports suppressed tokens as -inf
                differences.append(float(np.abs(logits[len(prompt) - 1 + step].numpy()[allowed]
                                                - theirs[allowed]).max()))
        print(f"{start + len(rows)} / {len(table)} clips, {identical} identical", flush=True)
    summary = {"clips": len(table), "identical_greedy_transcripts": identical,
               "max_logit_difference": max(differences), "median_logit_difference": float(np.median(differences)),
               "steps_compared": len(differences), "mismatches": mismatches}
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({key: value for key, value in summary.items() if key != "mismatches"}))


if __name__ == "__main__":
    main()
