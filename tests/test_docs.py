"""The documentation: a README that fits one screen and links only to what exists, a docs site that builds
with every link checked (MkDocs --strict: a broken link, a missing anchor or a page left out of the nav fails), and
one table of what a change reruns, which follows from dvc.yaml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO_ROOT, documented_reruns

README_LINES = 150


def test_readme_fits_one_screen_and_its_links_resolve() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_LINES
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links, "the README links to the docs pages"
    missing = [link for link in links if not link.startswith("http") and not (REPO_ROOT / link).exists()]
    assert missing == []
    for page in (REPO_ROOT / "docs").glob("*.md"):  # every topic page is reachable from the README
        assert f"docs/{page.name}" in text or page.name == "index.md", page.name


def test_docs_site_builds_with_every_link_checked(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
                             "--config-file", str(REPO_ROOT / "mkdocs.yml")], capture_output=True, text=True,
                            check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "handing-over.html").is_file()


def test_a_broken_link_fails_the_docs_build(tmp_path: Path) -> None:
    """The check can fail: a copy of the docs with one link to a page that does not exist does not build."""
    import shutil

    shutil.copytree(REPO_ROOT / "docs", tmp_path / "docs")
    shutil.copy(REPO_ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "speed.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the missing page](missing.md).\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode != 0 and "missing.md" in result.stderr


def _overlaps(path: str, other: str) -> bool:
    return path == other or path.startswith(other + "/") or other.startswith(path + "/")


def _paths(entries: list) -> list[str]:
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def reruns_from_dvc_yaml(change: str) -> set[str]:
    """The stages that read the params key ``change`` (or its section), and every stage downstream of them
    through deps on their outputs: what `dvc repro` reruns when the change alters those outputs."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    reruns = {name for name, stage in stages.items()
              if any(change == key or change.startswith(key + ".") for key in stage.get("params", []))}
    grew = True
    while grew:
        outs = [path for name in reruns for kind in ("outs", "metrics", "plots")
                for path in _paths(stages[name].get(kind, []))]
        after = {name for name, stage in stages.items()
                 if any(_overlaps(dep, out) for dep in stage.get("deps", []) for out in outs)}
        grew = not after <= reruns
        reruns |= after
    return reruns


def test_the_documented_reruns_follow_from_dvc_yaml() -> None:
    table = documented_reruns()
    assert {"finetune.lr", "freeze.depth", "nothing"} <= set(table)  # the rows the end-to-end tests run
    for change, stages in table.items():
        derived = set() if change == "nothing" else reruns_from_dvc_yaml(change)
        assert stages == derived, f"docs/pipeline.md says {change} reruns {sorted(stages)}; dvc.yaml: {sorted(derived)}"


def test_no_other_page_lists_what_a_change_reruns() -> None:
    """docs/pipeline.md's table is the one list: another page that names stages beside "rerun" would drift."""
    stage_names = set(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            named = stage_names & set(re.findall(r"`?([a-z_]+)`?", line))
            if "rerun" in line and len(named) >= 2 and page.name != "pipeline.md":
                raise AssertionError(f"{page.name}:{number} lists stages a change reruns; link docs/pipeline.md's "
                                     f"table instead: {line.strip()}")
