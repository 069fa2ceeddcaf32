"""The student edition's notebooks: every chapter without its solutions, for what the edition serves.

The student HTML hides the solutions itself (sphinx-exercise's ``hide_solutions``), but its download buttons
serve the notebooks (``_sources/``) and its Colab links open them from the repository. Here each chapter's
notebook loses every ``:::{solution}`` block of its Markdown and every code cell tagged ``solution`` (the
hidden checks of a solution, which hold its code or the numbers it quotes). :func:`write_notebooks` writes
them as the tree the pages workflow pushes to the edition's branch (the Colab links point there), and
:func:`replace_sources` puts them in place of the built edition's ``_sources/``.

:func:`fingerprints` and :func:`find_leaks` check the result independently of the stripping: a fingerprint is
a line of a solution (its prose or its code) that the chapter's visible text does not also contain; a served
file that contains one leaks that solution.
"""

from __future__ import annotations

import ast
import copy
import html
import json
import re
from pathlib import Path

import nbformat
import yaml

from .chapters import _BLOCK, ROOT, chapter_entries

SOLUTION_TAG = "solution"  # the tag of a hidden code cell that checks a solution (see book/_template.ipynb)
REMOVED = "*The solution of this exercise is not in the student edition.*"
MIN_FINGERPRINT = 24  # characters: shorter lines ("$$", "return mu", "assert ok") are not specific to a solution
README = """# The student edition's notebooks

Generated from the book's `main` branch by `python -m ddpm_tutor.assignments student --out DIR` (the pages
workflow pushes them here on every push to main). They are the chapters without their solutions, for the
student edition's Colab links. Do not edit them here: edit the chapters on `main`.
"""


def _is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and SOLUTION_TAG in cell.metadata.get("tags", [])


def without_solutions(source: str, replacement: str = "") -> str:
    """A Markdown cell's text with each ``:::{solution}`` block replaced by ``replacement``."""
    return _BLOCK.sub(lambda m: replacement if m["kind"] == "solution" else m[0], source)


def _solution_blocks(source: str) -> list[str]:
    return [m["body"] for m in _BLOCK.finditer(source) if m["kind"] == "solution"]


def strip_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of a chapter notebook without its solution blocks (each replaced by one line saying so) and
    without its code cells tagged ``solution``; outputs are cleared (they may show a solution's numbers)."""
    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        if _is_solution_cell(cell):
            continue
        if cell.cell_type == "markdown":
            cell.source = without_solutions(cell.source, REMOVED)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    out.cells = cells
    return out


def _normal(text: str) -> str:
    return " ".join(text.split())


def _lines(text: str) -> set[str]:
    """Each line, and each line without a trailing comment (a copy of a solution's code may drop its comments)."""
    lines = text.split("\n")
    lines += [re.sub(r"\s#.*$", "", line) for line in lines]
    return {_normal(line) for line in lines if len(_normal(line)) >= MIN_FINGERPRINT}


def _split(nb: nbformat.NotebookNode) -> tuple[set[str], set[str]]:
    """(lines of the solution blocks, lines of the visible cells) of a chapter, as :func:`_lines` gives them."""
    solution, visible = set(), set()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for body in _solution_blocks(cell.source):
                solution |= _lines(body)
            visible |= _lines(without_solutions(cell.source))
        elif cell.cell_type == "code" and "remove-cell" not in cell.metadata.get("tags", []):
            visible |= _lines(cell.source)
    return solution, visible


def fingerprints(nb: nbformat.NotebookNode, shown: set[str] = frozenset()) -> set[str]:
    """The lines (whitespace collapsed, at least MIN_FINGERPRINT characters) of a chapter's solution blocks
    that none of its visible cells (Markdown outside the solutions, code cells not tagged ``remove-cell``) nor
    ``shown`` (lines visible elsewhere in the book) contains. Hidden cells do not count as visible, so a hidden
    copy of a solution's code is a leak."""
    solution, visible = _split(nb)
    visible = visible | set(shown)
    return {line for line in solution if not any(line in v for v in visible)}


def book_fingerprints(root: Path = ROOT) -> dict[str, list[str]]:
    """Toc entry -> the fingerprints of that chapter's solutions (sorted), leaving out the lines that any chapter
    shows (II.2's visible code reads the schedule as I.2's solution does: no secret)."""
    books = {e: nbformat.read(root / f"{e}.ipynb", as_version=4) for e in chapter_entries(root)}
    shown = set().union(*(_split(nb)[1] for nb in books.values()))
    return {e: sorted(fingerprints(nb, shown)) for e, nb in books.items()}


def page_text(path: Path) -> str:
    """What a served file says, whitespace collapsed: a notebook's cell sources and text outputs, a page's text
    without its tags (code is split into highlighting spans there), anything else as it is."""
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".ipynb":
        nb = json.loads(raw)
        parts = []
        for cell in nb.get("cells", []):
            parts.append("".join(cell.get("source", "")))
            for out in cell.get("outputs", []):
                texts = [out.get("text", "")] + [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
                parts += ["".join(t) for t in texts]
        return _normal("\n".join(parts))
    if path.suffix in (".html", ".htm"):
        return _normal(html.unescape(re.sub(r"<[^>]+>", "", raw)))
    return _normal(raw)


def find_leaks(text: str, prints: dict[str, list[str]]) -> list[str]:
    """The fingerprints (as "chapter: line") that ``text`` contains, and a ``:::{solution}`` fence if any."""
    leaks = [f"{entry}: {line}" for entry, lines in prints.items() for line in lines if line in text]
    if re.search(r":{3,}\{solution\}", text):
        leaks.append("a :::{solution} block")
    return leaks


def _binds(tree: ast.AST) -> set[str]:
    """The names a cell's code binds at the top level of the notebook: assignments, defs, imports."""
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return names | {(a.asname or a.name).split(".")[0] for n in imports for a in n.names}


def removed_names_used(nb: nbformat.NotebookNode) -> list[str]:
    """Names that a removed (``solution``-tagged) cell binds and a later kept code cell reads before binding
    them itself: the student notebook would stop there with a NameError. Empty when every kept cell runs."""
    bound: set[str] = set()
    used = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # the install cell's %pip
            continue
        if _is_solution_cell(cell):
            bound |= _binds(tree)
            continue
        loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        binds = _binds(tree)
        used += sorted((loads & bound) - binds)
        bound -= binds
    return used


def write_notebooks(out: Path, root: Path = ROOT) -> list[Path]:
    """Write every chapter's student notebook to ``out/<toc entry>.ipynb`` (the repository's layout, which the
    Colab links follow) and a README; returns the notebooks. A solution left in one is an error."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder, got the file {out}")
    written = []
    for entry in chapter_entries(root):
        nb = nbformat.read(root / f"{entry}.ipynb", as_version=4)
        student = strip_solutions(nb)
        path = out / f"{entry}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student, path)
        leaks = find_leaks(page_text(path), {entry: sorted(fingerprints(nb))})
        if leaks:
            raise ValueError(f"{entry}: the student notebook still holds a solution: {leaks[:3]}")
        written.append(path)
    (out / "README.md").write_text(README)
    return written


def replace_sources(html_dir: Path, notebooks: Path) -> list[Path]:
    """Put the student notebooks (from :func:`write_notebooks`) in place of every ``_sources/**/*.ipynb`` of a
    built edition, whose download buttons serve them; returns the replaced files. A served notebook that is not
    a chapter (so has no student version) is an error."""
    sources = Path(html_dir) / "_sources"
    replaced = []
    for served in sorted(sources.rglob("*.ipynb")):
        student = Path(notebooks) / served.relative_to(sources)
        if not student.is_file():
            raise ValueError(f"{served}: the edition serves this notebook, but {notebooks} has no student version")
        served.write_bytes(student.read_bytes())
        replaced.append(served)
    return replaced


def check_site(html_dir: Path, prints: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every page and served file of a built edition that holds a solution: path -> its leaks."""
    found = {}
    for path in sorted(Path(html_dir).rglob("*")):
        if path.suffix in (".html", ".ipynb", ".md", ".txt", ".py") and path.is_file():
            leaks = find_leaks(page_text(path), prints)
            if leaks:
                found[str(path)] = leaks
    return found


def write_config(out: Path, cache: Path, branch: str, root: Path = ROOT) -> tuple[Path, Path]:
    """The student edition's Jupyter Book config and toc in ``out``: the book's, with solutions hidden, the
    instructor's guide left out, the execution cache of a build of the book reused (``cache``), the Colab links
    on ``branch`` (where the pages workflow pushes :func:`write_notebooks`' tree) and no repository button
    (the repository holds the solutions). Returns (config, toc)."""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)*", branch) or branch == "main":
        raise ValueError(f"branch must be a git branch name other than main (the solutions' branch), got {branch!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = yaml.safe_load((root / "_config.yml").read_text())
    c.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True
    c["sphinx"]["recursive_update"] = True
    c["title"] = c["title"] + " (student edition)"
    c.setdefault("execute", {})["cache"] = str(Path(cache).resolve())
    c["exclude_patterns"] = c.get("exclude_patterns", []) + ["book/instructors.ipynb", "book/instructors.md"]
    c.setdefault("repository", {})["branch"] = branch
    c.setdefault("html", {})["use_repository_button"] = False
    t = yaml.safe_load((root / "_toc.yml").read_text())
    for part in t.get("parts", []):
        part["chapters"] = [f for f in part.get("chapters", []) if not f.get("file", "").startswith("book/instructors")]
    config, toc = out / "_config_student.yml", out / "_toc_student.yml"
    config.write_text(yaml.safe_dump(c, sort_keys=False))
    toc.write_text(yaml.safe_dump(t, sort_keys=False))
    return config, toc
