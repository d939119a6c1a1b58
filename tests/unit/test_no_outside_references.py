"""The repository stands alone: no tracked file points at notes kept outside it.

Facts the code relies on are stated where they are used or in docs/aws-facts.md, with their public
source; a citation of a file outside the repository (a sibling checkout's reference notes) would be
unreadable to anyone who clones it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("chalicelib/", "jamsdr/", "tests/", "templates/", "docs/", "benchmarks/",
           "app.py", "README.md", "Makefile")
FORBIDDEN = ("dr-facts", "../shared")
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()


def _tracked_text_files() -> dict[str, str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--", *SCANNED], cwd=ROOT,
                            capture_output=True, check=True).stdout
    texts: dict[str, str] = {}
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if not name or name == SELF or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (an image)
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def test_no_tracked_file_cites_notes_outside_the_repository() -> None:
    texts = _tracked_text_files()
    assert "app.py" in texts and "README.md" in texts  # the scan really read the tree
    found = [
        f"{name}:{number}: {line.strip()}"
        for name, text in sorted(texts.items())
        for number, line in enumerate(text.splitlines(), start=1)
        if any(word in line for word in FORBIDDEN)
    ]
    assert found == [], "cite the fact inline or in docs/aws-facts.md instead:\n" + "\n".join(found)
