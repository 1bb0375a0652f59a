"""Griffe extension: show the reST bits of streamml's docstrings readably in the reference.

The docstrings are Google style, read both by ``help()`` and by this site, with
two reST habits Markdown does not know:

- cross-references written as Sphinx roles
  (``:func:`~streamml.operators._core.keys.route```), many to private modules
  the reference leaves out, are shown as inline code: the short name for a
  ``~`` target, the name as written otherwise;
- simple tables (columns under ``=====  =====`` rules) are shown as they
  read in ``help()``, in a preformatted block.

>>> _plain("see :func:`~streamml.kafka.sink` and :class:`Rejected`")
'see `sink` and `Rejected`'
>>> print(_plain("Outcomes:\\n\\n  ===  ===\\n  a    b\\n  ===  ===\\n  1    2\\n  ===  ===\\n"))
Outcomes:
<BLANKLINE>
  ```text
  ===  ===
  a    b
  ===  ===
  1    2
  ===  ===
  ```
<BLANKLINE>
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")
_RULE = re.compile(r"^(\s*)=+( +=+)+\s*$")


def _tables_fenced(text: str) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        rule = _RULE.match(lines[i])
        rules = [j for j in range(i, len(lines)) if _RULE.match(lines[j])][:3] if rule else []
        if len(rules) == 3:
            indent = rule[1]
            out += [f"{indent}```text", *lines[i : rules[2] + 1], f"{indent}```"]
            i = rules[2] + 1
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _plain(text: str) -> str:
    text = _ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)
    return _tables_fenced(text)


class RstRoles(griffe.Extension):
    """Rewrite roles and simple tables in every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _plain(obj.docstring.value)
