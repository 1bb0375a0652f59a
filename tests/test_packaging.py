"""Every package folder ships in the wheel: pyproject lists each one (setuptools does not find them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _package_folders() -> set[str]:
    names = set()
    for top, dotted in (("streamml", "streamml"), ("operators", "streamml.operators")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            names.add(".".join([dotted, *rel.parts]))
    return names


def test_pyproject_lists_every_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _package_folders()
    assert config["package-dir"]["streamml.operators"] == "operators"
