"""The offline report template: the report page with vega, vega-lite and vega-embed inlined.

DVC's own plot pages load those libraries from a CDN and render blank offline. The libraries are
vendored in ``assets/vendor/`` (taken from the npm registry at pinned versions with ``npm pack``) and
inlined into ``assets/report_page.html`` when a report is made, so the page is the single source and
reports render with no network at all.

Refresh the vendored files (needs npm and the registry):
    python -m crosstune.reporting.template
"""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PAGE = ASSETS / "report_page.html"
VENDOR = ASSETS / "vendor"
SCRIPTS_MARKER = "<!--crosstune:vega-scripts-->"

# (npm package, version, file inside the package): the majors dvc-render's own page uses.
LIBRARIES = (
    ("vega", "5.33.1", "package/build/vega.min.js"),
    ("vega-lite", "5.23.0", "package/build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "package/build/vega-embed.min.js"),
)


def vendored_path(package: str, version: str) -> Path:
    return VENDOR / f"{package}-{version}.min.js"


def fetch_library(package: str, version: str, member: str, workdir: Path) -> str:
    """``npm pack`` one package (npm checks the registry's integrity hash) and return the file's text."""
    subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=workdir, check=True,
                   capture_output=True, text=True)
    with tarfile.open(workdir / f"{package}-{version}.tgz") as archive:
        extracted = archive.extractfile(member)
        if extracted is None:
            raise FileNotFoundError(f"{package}@{version} has no {member}")
        return extracted.read().decode("utf-8")


def build_template() -> str:
    """The report page with each vendored library inlined in its own ``<script>`` element."""
    blocks = []
    for package, version, _ in LIBRARIES:
        path = vendored_path(package, version)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; refresh it with `python -m crosstune.reporting.template`.")
        source = path.read_text(encoding="utf-8")
        if "</script" in source.lower():
            raise ValueError(f"{package} contains '</script' and cannot be inlined")
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        blocks.append(f"<!-- {package}@{version} from the npm registry, sha256 {digest} -->\n<script>{source}</script>")
    return PAGE.read_text(encoding="utf-8").replace(SCRIPTS_MARKER, "\n".join(blocks))


def main() -> None:
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for package, version, member in LIBRARIES:
            path = vendored_path(package, version)
            path.write_text(fetch_library(package, version, member, Path(workdir)), encoding="utf-8")
            print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
