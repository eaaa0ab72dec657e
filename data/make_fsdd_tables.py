"""Write the FSDD example tables (``data/fsdd/*.csv``) from the recordings' file names.

``{digit}_{speaker}_{index}.wav``: the spoken-digit task is speaker-disjoint (george and lucas, Greek and
German accents, are never heard in training); the speaker-identification task uses upstream's split
(recording index 0-4 test, 5-49 train) with the speaker as the label. Run from the repository root:
``python data/make_fsdd_tables.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "fsdd"
TEST_SPEAKERS = ("george", "lucas")


def main() -> None:
    rows = []
    for path in sorted((ROOT / "recordings").glob("*.wav")):
        digit, speaker, index = path.stem.split("_")
        rows.append({"audio": f"recordings/{path.name}", "digit": digit, "speaker": speaker, "index": int(index)})
    rows.sort(key=lambda row: (row["speaker"], int(row["digit"]), row["index"]))
    tables = {
        "digits_train.csv": [row for row in rows if row["speaker"] not in TEST_SPEAKERS],
        "digits_test.csv": [row for row in rows if row["speaker"] in TEST_SPEAKERS],
        "speakers_train.csv": [row for row in rows if row["index"] >= 5],
        "speakers_test.csv": [row for row in rows if row["index"] < 5],
    }
    for name, table in tables.items():
        with open(ROOT / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["audio", "digit", "speaker", "index"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(table)
        print(f"{name}: {len(table)} rows")


if __name__ == "__main__":
    main()
