"""A griffe extension for the API reference: the package's docstrings are written with reST habits.

They use Sphinx roles (``:class:`IndexReader```, ``:func:`~infinity_assets.index.search_text```) and literal
blocks introduced by ``::``. MkDocs renders Markdown, so without this the roles would show as text. Roles become
inline code of the name they point to (the last dotted part when the target starts with ``~``, as in Sphinx),
``Example::`` becomes ``Example:`` before its indented block, and double-backquoted literals single ones.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj|const):`(~?)([^`]+)`")
LITERAL_BLOCK = re.compile(r"::\n")
DOUBLE_BACKQUOTE = re.compile(r"``([^`]+)``")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def markdown(text: str) -> str:
    """The docstring text with reST roles, literal-block markers and double backquotes as Markdown."""
    text = ROLE.sub(_role, text)
    text = DOUBLE_BACKQUOTE.sub(r"`\1`", text)
    return LITERAL_BLOCK.sub(":\n", text)


class RestRoles(griffe.Extension):
    """Rewrites every docstring as it is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
