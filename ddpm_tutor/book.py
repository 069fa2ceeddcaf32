"""The book's pages: insert computed numbers into the prose (myst-nb glue), wherever a chapter runs."""

from __future__ import annotations

from typing import Any


def glue(name: str, value: Any) -> Any:
    """Record ``value`` under ``name`` for ``{glue:text}`name``` in the chapter's prose; returns ``value``.

    In the book build this is myst-nb's ``glue(name, value, display=False)``. Where myst-nb is not installed
    (Colab, a plain Jupyter) there is no prose to insert into, so it only returns the value: the chapter's
    code and its asserts run the same everywhere.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name must be a Python-identifier-like string, got {name!r}")
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return value
    _glue(name, value, display=False)
    return value
