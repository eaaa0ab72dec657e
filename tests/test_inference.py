"""crosstune.inference: `crosstune predict` errors clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_predict_cli_errors_clearly(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "crosstune", "predict", "--model", str(tmp_path / "nope"),
                             "--input", "x.csv", "--output", "y.csv"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "no config.json" in result.stderr
