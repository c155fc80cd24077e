"""docs/reliability.md stays true: every test its table cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cited_tests() -> list[tuple[str, str]]:
    """(file, test) for each citation; ``::test_x`` alone continues the file cited before it in the row."""
    cited = []
    for row in (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8").splitlines():
        if not row.startswith("|"):
            continue
        current = None
        for file, name in re.findall(r"`(?:tests/)?(test_\w+\.py)?(?:::)?(test_\w+)?`", row):
            current = file or current
            if name:
                cited.append((current, name))
    return cited


def test_every_cited_test_exists():
    cited = _cited_tests()
    assert len(cited) > 50  # the parser still reads the table
    defined = {f.name: set(re.findall(r"^(?:async )?def (test_\w+)", f.read_text(encoding="utf-8"), flags=re.M))
               for f in (ROOT / "tests").glob("test_*.py")}
    missing = [f"{file}::{name}" for file, name in cited if name not in defined.get(file, set())]
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"
