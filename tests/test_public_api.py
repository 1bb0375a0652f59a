"""Only Bytewax's public API is used: no underscore name from a ``bytewax`` module anywhere.

A private name (``_KafkaSourcePartition``, ``bytewax.operators._utils``...)
can change in any Bytewax release without notice. The check parses every
Python file of the library, the examples and the benchmarks and names the
file and line of each use: ``from bytewax.x import _y``, ``from bytewax._x
import y``, ``import bytewax._x`` and attribute access such as
``bytewax.connectors.kafka._X`` or ``kafka._X`` after ``from bytewax.connectors
import kafka``.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("streamml", "operators", "examples", "benchmarks")


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _is_bytewax(module: str | None) -> bool:
    return module is not None and (module == "bytewax" or module.startswith("bytewax."))


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def private_uses(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for each use of an underscore name of a ``bytewax`` module."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    bound: dict[str, str] = {}  # local name -> the bytewax module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_bytewax(alias.name):
                    continue
                if _private(alias.name):
                    found.append((node.lineno, f"import {alias.name}"))
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound["bytewax"] = "bytewax"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_bytewax(node.module):
            module = node.module or ""
            for alias in node.names:
                if _private(module) or _private(alias.name):
                    found.append((node.lineno, f"from {module} import {alias.name}"))
                bound[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        dotted = _dotted(node)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        before_last = rest.rpartition(".")[0]
        if head in bound and _private(rest) and not _private(before_last):
            # a chain is reported once, at its first private attribute
            found.append((node.lineno, f"{bound[head]}.{rest}"))
    return sorted(set(found))


def violations(roots: Iterable[Path]) -> list[str]:
    """``path:line: what`` for every private Bytewax use in the ``.py`` files under ``roots``."""
    out = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if ".venv" in path.parts:
                continue
            for line, what in private_uses(path.read_text(encoding="utf-8")):
                out.append(f"{path}:{line}: {what}")
    return out


def test_no_private_bytewax_name_in_library_examples_or_benchmarks() -> None:
    roots = [ROOT / name for name in CHECKED]
    assert all(r.is_dir() for r in roots)
    assert violations(roots) == []


@pytest.mark.parametrize(
    "code, what",
    [
        (
            "from bytewax.connectors.kafka import KafkaSource, _KafkaSourcePartition",
            "from bytewax.connectors.kafka import _KafkaSourcePartition",
        ),
        ("from bytewax.operators._utils import x", "from bytewax.operators._utils import x"),
        ("import bytewax.operators._utils as u", "import bytewax.operators._utils"),
        (
            "import bytewax.connectors.kafka\nP = bytewax.connectors.kafka._KafkaSourcePartition",
            "bytewax.connectors.kafka._KafkaSourcePartition",
        ),
        (
            "from bytewax.connectors import kafka\nP = kafka._list_parts",
            "bytewax.connectors.kafka._list_parts",
        ),
        (
            "import bytewax.operators.windowing as _w\nL = _w._SlidingWindowerLogic.intersects",
            "bytewax.operators.windowing._SlidingWindowerLogic",
        ),
    ],
)
def test_each_kind_of_private_use_is_named_with_file_and_line(
    tmp_path: Path, code: str, what: str
) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "clean.py").write_text(
        "import bytewax.operators as op\nfrom bytewax.dataflow import Dataflow\n"
    )
    (pkg / "bad.py").write_text("import os\n\n" + code + "\n")
    [found] = violations([tmp_path])
    line = 3 + code.count("\n")  # the code's last line
    assert found.startswith(f"{pkg / 'bad.py'}:{line}: ")
    assert found.endswith(what)


def test_public_names_and_other_packages_private_names_pass(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text(
        textwrap.dedent(
            """
            import bytewax.operators as op
            from bytewax.connectors.kafka import KafkaSourceMessage, BYTEWAX_CONSUMER_LAG_GAUGE
            from confluent_kafka import KafkaError
            from streamml.kafka import _decoder
            code = KafkaError._PARTITION_EOF
            name = op.__name__
            from . import _local
            """
        )
    )
    assert violations([tmp_path]) == []
