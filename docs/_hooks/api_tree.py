"""MkDocs hook: let mkdocstrings find ``streamml.operators``, which lives in ``operators/``.

The distribution installs ``operators/`` as ``streamml.operators`` (setuptools
``package-dir``), a mapping griffe's static loader does not follow: it finds
``streamml/`` and no ``operators`` inside it. This hook lays out the installed
shape in a temporary folder — ``streamml/`` with links to every entry of the
real ``streamml/`` plus ``operators`` linked to ``operators/`` — and points
the Python handler's search path at it, so the reference is read from the
source, with the import paths a user types.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[2]


def _installed_layout() -> Path:
    tree = Path(tempfile.mkdtemp(prefix="streamml-api-"))
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    package = tree / "streamml"
    package.mkdir()
    for entry in (ROOT / "streamml").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "operators").symlink_to(ROOT / "operators")
    return tree


@event_priority(100)  # before mkdocstrings creates its handler on the first page
def on_config(config: Any) -> Any:
    handlers = config.plugins["mkdocstrings"].config.handlers
    handlers.setdefault("python", {})["paths"] = [str(_installed_layout())]
    return config
