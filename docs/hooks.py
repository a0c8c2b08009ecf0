"""mkdocs hooks of this site (not a page: excluded in mkdocs.yml).

The package's docstrings cross-reference with reStructuredText roles (:func:`name`, :class:`name`,
...), which Markdown renders as the role's text followed by inline code. This hook drops the role
prefix from rendered pages so that only the code span remains.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|obj|exc):(?=<code>)")


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub("", html)
