"""The book's rule for numbers in prose (CONTRIBUTING.md): no number that code can produce is typed by hand.

A number in a chapter's markdown (a decimal like 0.37, a count of three or more digits like 674 or 22,752) must
be one of: glued from code ({glue:text}`key`, not seen by this scan); present in the same notebook's code (the
computation or the hidden assert that checks it); in a paragraph that cites where it comes from (a {cite}, a
table, section or appendix of a paper), or in a table right after such a paragraph; a year; or one of the few
structural constants below. This scan is a net for the typed numbers that slip through review, not a proof.
"""

import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("part*/*.ipynb"))
NUMBER = re.compile(r"(?<![\w.\-^_{])(\d{1,3}(?:,\d{3})+|\d+\.\d+|\d{3,})(?![\w}])")
SOURCE = re.compile(r"\{cite|Table|table|[Ss]ec\.|[Ss]ection|[Aa]ppendix|paper")
STRUCTURAL = {
    "784": "28 x 28, the pixels of an MNIST digit",
    "12.5": "one eighth, in percent",
    "99.7": "the three-sigma fraction of a Gaussian, in percent",
    "99.9": "a chosen ellipsoid level, in percent",
}


def _prose(md: str) -> str:
    """Markdown without what is not prose: code, display math, glue and cross-reference roles, labels, links."""
    for pattern in (r"```.*?```", r"\$\$.*?\$\$", r"\\begin\{.*?\\end\{[^}]*\}"):
        md = re.sub(pattern, " ", md, flags=re.S)
    for pattern in (
        r"\{glue:?\w*\}`[^`]*`",
        r"\{(doc|ref|eq|numref|download)\}`[^`]*`",
        r"\(([^)]*)\)=",
        r"\]\([^)]*\)",
        r"https?://\S+",
        r":label: .*",
    ):
        md = re.sub(pattern, " ", md)
    return md


def typed_numbers(path: Path) -> list[tuple[int, str, str]]:
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code").replace("_", "")
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        sourced = False
        for para in _prose("".join(cell["source"])).split("\n\n"):
            is_table = para.lstrip().startswith("|")
            sourced = bool(SOURCE.search(para)) or (is_table and sourced)
            for m in NUMBER.finditer(para):
                v = m.group(1)
                if sourced or re.fullmatch(r"(19|20)\d\d", v) or v in STRUCTURAL or v.replace(",", "") in code:
                    continue
                found.append((i, v, " ".join(para[max(0, m.start() - 60) : m.end() + 20].split())))
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_hand_typed_number_in_prose(path):
    found = typed_numbers(path)
    assert not found, (
        "numbers typed into the prose with no glue, no assert in the notebook's code and no cited "
        "source (cell, number, context):\n" + "\n".join(map(str, found))
    )


def test_the_scan_sees_a_typed_number(tmp_path):
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": ["The chain forgets x_0 at t = 674, and 0.37 of it.\n"]},
            {"cell_type": "code", "source": ["x = 1\n"]},
        ]
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert [v for _, v, _ in typed_numbers(path)] == ["674", "0.37"]
    nb["cells"][1]["source"] = ["assert first == 674 and round(r, 2) == 0.37\n"]
    path.write_text(json.dumps(nb))
    assert typed_numbers(path) == []
