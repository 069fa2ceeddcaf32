"""Write an nbgrader course folder from the chapters: one assignment per chapter or per part.

Each notebook of ``source/<assignment>/`` has, per exercise: the exercise text (read-only); for a code exercise
the chapter's stub with the book's solution between ``### BEGIN SOLUTION`` / ``### END SOLUTION`` and an
autograded test cell that calls the chapter's checker; for a written exercise a manually graded task cell whose
``=== BEGIN MARK SCHEME ===`` region holds the book's solution as the rubric, and a cell for the answer.
``nbgrader generate_assignment`` then strips the solutions and the rubrics into ``release/``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from .catalog import EXERCISES
from .chapters import ROOT, Chapter, Exercise, read_book

COURSE_ID = "ddpm-tutor"
BY = ("chapter", "part")
DEFAULT_TIMEOUT = 60  # seconds per cell when grading: the checkers take well under a second


def to_markdown(text: str) -> str:
    """MyST roles and equation labels as plain Jupyter Markdown (a notebook shows no cross-references)."""
    text = re.sub(r"\{glue(?::\w+)?\}`[^`]+`", "(a number the chapter computes)", text)
    text = re.sub(r"\{eq\}`([^`]+)`", r"eq. *\1*", text)
    text = re.sub(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", lambda m: f"the chapter *{Path(m[1]).name}*", text)
    text = re.sub(r"\{cite(?::\w+)?\}`([^`]+)`", r"[\1]", text)
    text = re.sub(r"\{prf:ref\}`([^`]+)`", r"*\1*", text)
    text = re.sub(r"^(\$\$)[ \t]*\([\w-]+\)[ \t]*$", r"\1", text, flags=re.M)  # "$$ (eq-label)" closes a display
    return text


def _meta(**nbgrader) -> dict:
    """Cell metadata of an nbgrader cell (schema 3)."""
    return {"nbgrader": {"schema_version": 3, "solution": False, "grade": False, "locked": False, **nbgrader}}


def solution_cell_source(ex: Exercise) -> str:
    """The stub, its ``raise NotImplementedError`` replaced by the solution's body inside nbgrader's delimiters.

    The stub's header, docstring and hints stay outside the region, so the released notebook shows the same
    function the chapter does, with nbgrader's stub in place of the body.
    """
    keep = [line for line in ex.stub.split("\n") if not line.strip().startswith("raise NotImplementedError")]
    sol = ex.solution_code.split("\n")
    header_end = next(i for i, line in enumerate(sol) if line.rstrip().endswith(":") and not line.startswith(" "))
    body_lines = sol[header_end + 1 :]
    kept = {line.strip() for line in keep[1:] if line.strip()}
    while body_lines and body_lines[0].strip() in kept:  # a first line the stub already has (to_x0's `ab = ...`)
        body_lines.pop(0)
    body = textwrap.dedent("\n".join(body_lines))
    indent = " " * 4
    region = [indent + "### BEGIN SOLUTION", textwrap.indent(body, indent), indent + "### END SOLUTION"]
    return "\n".join(keep + region)


def test_cell_source(ex: Exercise) -> str:
    """The autograded test: the chapter's checker must pass; a stub that still raises scores 0 (it returns None).

    A wrong answer fails with the checker's message alone (the first wrong entry, the likely mistake), which is
    what the feedback shows, rather than a traceback through the checker's code.
    """
    return (
        f"from ddpm_tutor.exercises import CheckFailed\n"
        f"from {ex.check_module} import {ex.check}\n\n"
        f"try:\n"
        f"    passed = {ex.check}({ex.function})\n"
        f"except CheckFailed as wrong:\n"
        f"    raise CheckFailed(str(wrong)) from None\n"
        f'assert passed, "{ex.function}: not attempted yet (it still raises NotImplementedError)"'
    )


def _heading(ex: Exercise, number: int) -> str:
    title = f": {to_markdown(ex.title)}" if ex.title else ""
    points = EXERCISES[ex.label].points
    return f"## Exercise {number}{title}\n\n*`{ex.label}`, {points} point{'s' * (points != 1)}*\n\n"


def chapter_notebook(chapter: Chapter) -> nbformat.NotebookNode:
    """The instructor's (source) notebook of one chapter's exercises, with solutions and rubrics."""
    cells = [
        new_markdown_cell(
            f"# {chapter.title}: exercises\n\n"
            f"The exercises of the chapter *{chapter.title}* ({chapter.entry}). Read the chapter first; the written "
            "answers may use its results. Write each function where it says `YOUR CODE HERE` and each written "
            "answer in the cell under its question. Run every cell from the top before you submit: the test cell "
            "under a function is the one that grades it, and it names the first wrong entry if there is one. "
            "Do not rename or delete the cells, and keep this notebook's name.",
            metadata=_meta(grade_id=f"{chapter.part}-{chapter.name}-intro", locked=True),
        ),
        # the chapter's own first cell: installs the library on Colab, does nothing elsewhere
        new_code_cell(
            chapter.install_cell, metadata=_meta(grade_id=f"{chapter.part}-{chapter.name}-setup", locked=True)
        ),
        new_code_cell(
            "import math\n\nimport torch",
            metadata=_meta(grade_id=f"{chapter.part}-{chapter.name}-imports", locked=True),
        ),
    ]
    for number, ex in enumerate(chapter.exercises, 1):
        points = EXERCISES[ex.label].points
        if ex.kind == "code":
            cells.append(
                new_markdown_cell(
                    _heading(ex, number) + to_markdown(ex.prompt),
                    metadata=_meta(grade_id=f"{ex.label}-text", locked=True),
                )
            )
            cells.append(new_code_cell(solution_cell_source(ex), metadata=_meta(grade_id=ex.label, solution=True)))
            cells.append(
                new_code_cell(
                    test_cell_source(ex),
                    metadata=_meta(grade_id=f"{ex.label}-check", grade=True, locked=True, points=points),
                )
            )
        else:
            rubric = to_markdown(ex.solution)
            cells.append(
                new_markdown_cell(
                    _heading(ex, number)
                    + to_markdown(ex.prompt)
                    + "\n\n=== BEGIN MARK SCHEME ===\n\n**Rubric (the book's solution):**\n\n"
                    + f"{rubric}\n\n=== END MARK SCHEME ===",
                    metadata=_meta(grade_id=ex.label, task=True, locked=True, points=points),
                )
            )
            cells.append(new_markdown_cell(f"**Your answer to exercise {number}** (replace this line)"))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["ddpm_tutor"] = {"chapter": chapter.entry, "exercises": [e.label for e in chapter.exercises]}
    return nb


def assignments(chapters: list[Chapter], by: str) -> dict[str, list[Chapter]]:
    """Assignment name -> its chapters: "part1-01_augmentation", ... (by chapter) or "part1", ... (by part)."""
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    out: dict[str, list[Chapter]] = {}
    for chap in chapters:
        out.setdefault(chap.part if by == "part" else f"{chap.part}-{chap.name}", []).append(chap)
    return out


def config_text(timeout: int = DEFAULT_TIMEOUT) -> str:
    """The course's nbgrader_config.py: the course is its folder (movable), its own sqlite gradebook, the
    per-cell timeout."""
    return (
        "# Written by `python -m ddpm_tutor.assignments build`; nbgrader reads it from this folder.\n"
        "import os\n\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
        "c.CourseDirectory.root = here\n"
        'c.CourseDirectory.db_url = "sqlite:///" + os.path.join(here, "gradebook.db")\n'
        f"c.Execute.timeout = {int(timeout)}  # seconds per cell: an endless loop is interrupted, the rest graded\n"
        'c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}\n'
    )


def build_course(
    out: Path, by: str = "chapter", chapters: list[str] | None = None, root: Path = ROOT, timeout: int = DEFAULT_TIMEOUT
) -> dict[str, list[Path]]:
    """Write ``out/source/<assignment>/<chapter>.ipynb`` and ``out/nbgrader_config.py``; returns the notebooks.

    ``chapters``: toc entries or chapter stems to include (default: all); an unknown one is an error.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder, got the file {out}")
    book = read_book(root)
    if chapters:
        known = {c.entry: c for c in book} | {c.name: c for c in book} | {f"{c.part}/{c.name}": c for c in book}
        unknown = [c for c in chapters if c not in known]
        if unknown:
            raise ValueError(f"chapters: unknown {unknown}; expected toc entries such as {book[0].entry!r}")
        book = [c for c in book if c.entry in {known[x].entry for x in chapters}]
    missing = [e.label for c in book for e in c.exercises if e.label not in EXERCISES]
    if missing:
        raise ValueError(f"exercises without an entry in ddpm_tutor/assignments/catalog.py: {missing}")
    written: dict[str, list[Path]] = {}
    for name, chaps in assignments(book, by).items():
        folder = out / "source" / name
        folder.mkdir(parents=True, exist_ok=True)
        for chap in chaps:
            path = folder / f"{chap.name}.ipynb"
            nb = chapter_notebook(chap)
            nbformat.validate(nb)
            nbformat.write(nb, path)
            written.setdefault(name, []).append(path)
    (out / "nbgrader_config.py").write_text(config_text(timeout))
    return written
