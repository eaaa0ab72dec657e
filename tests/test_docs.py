"""The documentation: a README that fits one screen and links only to what exists, and a docs site that builds
with every link checked (MkDocs --strict: a broken link, a missing anchor or a page left out of the nav fails)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

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
