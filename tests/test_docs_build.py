"""The documentation site builds in strict mode: a broken link, a missing reference or a
docstring the reference cannot render fails ``make test``, as it fails ``make docs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # the reference is generated from the docstrings, the operators' included
    reference = (site / "reference" / "featurize" / "index.html").read_text()
    assert 'id="streamml.operators.featurize.rolling"' in reference
    assert "Add rolling aggregates of each key" in reference
    # reST roles in docstrings are shown as code, not as ":func:`...`"
    assert ":func:`" not in (site / "reference" / "kafka" / "index.html").read_text()
