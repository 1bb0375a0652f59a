"""Every Python block of the documentation (docs/**/*.md and README.md) runs, page by page.

Each page runs top to bottom in one namespace, in a fresh working folder, the
way a reader pastes its blocks into one Python session: Sybil finds the
fenced ``python`` blocks (a block starting with ``>>>`` is a doctest and its
output is checked). A block whose first line is ``# NAME.py`` is also saved as
``NAME.py`` in that folder, as the page tells the reader to do, so later
blocks can import it or run it with ``python -m bytewax.run``. A block that is
not meant to run is preceded by ``<!-- skip: next -->``. Pages that need a
broker start an embedded one themselves (0.1 s).
"""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
_SAVE_AS = re.compile(r"# (\w+\.py)\n")


def _saving(evaluate: Callable[[Example], object]) -> Callable[[Example], object]:
    def save_then_run(example: Example) -> object:
        named = _SAVE_AS.match(example.parsed)
        if named:
            Path(named[1]).write_text(example.parsed)
        return evaluate(example)

    return save_then_run


class _Blocks(PythonCodeBlockParser):
    @staticmethod
    def codeblock_parser_class(language: str, evaluator: Callable) -> CodeBlockParser:
        return CodeBlockParser(language, _saving(evaluator))


SYBIL = Sybil(
    parsers=[
        _Blocks(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE),
        SkipParser(),
    ]
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    document = SYBIL.parse(page)
    before = set(sys.modules)
    try:
        for example in document:
            example.evaluate()
    finally:
        # a page that failed half-way may leave a flow it started running
        for value in list(document.namespace.values()):
            if isinstance(value, subprocess.Popen) and value.poll() is None:
                value.kill()
                value.wait()
        # modules the page saved and imported belong to its folder only
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            if getattr(module, "__file__", None) and str(tmp_path) in module.__file__:
                del sys.modules[name]
