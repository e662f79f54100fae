"""The README's statements that code can check: every shipped config is listed, and what `make test` exits with."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_lists_every_shipped_config():
    readme = (REPO / "README.md").read_text()
    start = readme.index("Configs for each system are in `configs/`")
    listed = re.findall(r"`([\w*]+)`", readme[start : readme.index(";", start)])
    shipped = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    missing = [c for c in shipped if not any(fnmatch.fnmatch(c, pattern) for pattern in listed)]
    assert not missing, f"README's config list lacks {missing}"


def test_readme_says_make_test_exits_2_on_a_failure():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "exits 0 when pytest passes and 2 when it fails" in readme
    assert "It exits with pytest's own code" not in readme
