"""Griffe extension: show the reST roles of streamml's docstrings as code in the reference.

The docstrings are Google style, read both by ``help()`` and by this site;
cross-references in them are written as Sphinx roles
(``:func:`~streamml.operators._core.keys.route```), which Markdown would show
verbatim. Many point to private modules the reference leaves out, so they are
rendered as inline code: the short name for a ``~`` target, the name as
written otherwise.

>>> _plain("see :func:`~streamml.kafka.sink` and :class:`Rejected`")
'see `sink` and `Rejected`'
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")


def _plain(text: str) -> str:
    return _ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)


class RstRoles(griffe.Extension):
    """Rewrite roles in every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _plain(obj.docstring.value)
