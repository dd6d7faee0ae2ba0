"""The project's files speak of the project, not of how it was written: no numbered work periods and no issue
numbers as history in any tracked text file (the patterns are in HISTORY). A measurement's provenance is a date, a
commit and a machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HISTORY = re.compile(r"\b(?:sessions?\s+\d+|issues?\s+#?\d+|work\s+periods?\s+\d+)", re.IGNORECASE)
SESSION, ISSUE = "ses" + "sion", "iss" + "ue"  # spelt apart, so that this file passes its own check
SKIP_DIRS = {".git", ".venv", "runs", "data", "__pycache__", ".pytest_cache", "build", "dist"}


def tracked_files(repo: Path) -> list[Path]:
    """git's tracked files; outside a git checkout (an unpacked sdist), every file but build output."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
        return [repo / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in repo.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(repo).parts)]


def history_lines(paths: list[Path], root: Path) -> list[str]:
    """'path:line: text' for each line of a text file that narrates the project's history."""
    found = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # binary files (figures, weights) hold no prose
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()[:120]}")
    return found


def test_no_file_narrates_how_the_project_was_written() -> None:
    files = tracked_files(REPO)
    assert len(files) > 50
    assert history_lines(files, REPO) == []


def test_the_check_finds_both_patterns(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(f"Measured on 2026-11-26, commit 3839ca2.\nIn {SESSION} 8 the step took 29 ms.\n")
    (tmp_path / "b.py").write_text(f"# the switches of {ISSUE} #17\nx = 1  # a chat {SESSION}, {ISSUE} tracker\n")
    (tmp_path / "c.png").write_bytes(bytes(range(256)))
    found = history_lines(sorted(tmp_path.iterdir()), tmp_path)
    assert found == [f"a.md:2: In {SESSION} 8 the step took 29 ms.", f"b.py:1: # the switches of {ISSUE} #17"]
