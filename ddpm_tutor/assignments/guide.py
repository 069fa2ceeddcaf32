"""The instructor's guide's table of every exercise, made from the chapters and the catalog (never typed).

Times are measured, never estimated: a code exercise's test cell is timed when the table is made (the book's
solution through the chapter's checker), and a chapter's run time is the one jupyter-cache recorded when the
book build last executed the chapter's current code; without such a record the table says "not measured".
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat

from ..budget import get_budget
from .build import solution_cell_source, test_cell_source
from .catalog import EXERCISES
from .chapters import ROOT, Chapter, read_book

ROMAN = {"part1": "I", "part2": "II", "part3": "III", "part4": "IV"}


def build_cache(budget: str | None = None, root: Path = ROOT) -> Path:
    """The execution cache of the Makefile's build for ``budget``: _build_ci's for ci, _build's otherwise."""
    budget = budget or get_budget()
    return root / ("_build_ci/_build" if budget == "ci" else "_build") / ".jupyter_cache"


def chapter_seconds(chapters: list[Chapter], cache: Path, root: Path = ROOT) -> dict[str, float | None]:
    """entry -> seconds the chapter's current code took to execute, as jupyter-cache recorded it (None: no record)."""
    out: dict[str, float | None] = {c.entry: None for c in chapters}
    if not Path(cache).is_dir():
        return out
    from jupyter_cache import get_cache

    jc = get_cache(cache)
    for chap in chapters:
        nb = nbformat.read(root / f"{chap.entry}.ipynb", as_version=4)
        try:
            record = jc.match_cache_notebook(nb)
        except KeyError:  # never executed with this code
            continue
        seconds = record.data.get("execution_seconds")
        out[chap.entry] = float(seconds) if seconds is not None else None
    return out


def time_test_cell(ex) -> float:
    """Wall seconds of the exercise's test cell run on the book's solution, in this process (after one warm-up)."""
    ns: dict = {}
    exec("import math\nimport torch", ns)
    exec(solution_cell_source(ex), ns)
    code = compile(test_cell_source(ex), ex.label, "exec")
    exec(code, dict(ns))  # warm-up: imports, first torch calls
    start = time.perf_counter()
    exec(code, dict(ns))
    return time.perf_counter() - start


def exercise_rows(root: Path = ROOT, cache: Path | None = None, time_tests: bool = True) -> list[dict]:
    """One dict per exercise, in the book's order: id, chapter, goal, kind, graded, points, test_s, chapter_min."""
    import contextlib
    import io

    chapters = read_book(root)
    seconds = chapter_seconds(chapters, cache if cache is not None else build_cache(root=root), root)
    rows = []
    numbers: dict[str, int] = {}
    for chap in chapters:
        numbers[chap.part] = numbers.get(chap.part, 0) + 1
        for ex in chap.exercises:
            test_s = None
            if ex.kind == "code" and time_tests:
                with contextlib.redirect_stdout(io.StringIO()):  # the checker's success line
                    test_s = time_test_cell(ex)
            run = seconds[chap.entry]
            rows.append(
                {
                    "id": ex.label,
                    "chapter": f"{ROMAN.get(chap.part, chap.part)}.{numbers[chap.part]}",
                    "doc": chap.entry,
                    "goal": EXERCISES[ex.label].goal,
                    "kind": ex.kind,
                    "graded": "auto" if ex.kind == "code" else "manual",
                    "points": EXERCISES[ex.label].points,
                    "test_s": test_s,
                    "chapter_min": None if run is None else run / 60,
                }
            )
    return rows


def exercise_table(rows: list[dict], budget: str | None = None) -> str:
    """The rows as a MyST Markdown table; chapter cells link to the chapter."""
    budget = budget or get_budget()
    head = (
        "| id | chapter | learning goal | kind | graded | points | test cell (s) "
        f"| chapter run (min, budget {budget}) |\n"
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: |\n"
    )
    lines = []
    for r in rows:
        test = "–" if r["kind"] != "code" else ("not measured" if r["test_s"] is None else f"{r['test_s']:.3f}")
        run = "not measured" if r["chapter_min"] is None else f"{r['chapter_min']:.1f}"
        lines.append(
            f"| `{r['id']}` | {{doc}}`{r['chapter']} </{r['doc']}>` | {r['goal'].replace('|', '&#124;')} | {r['kind']} "
            f"| {r['graded']} "
            f"| {r['points']} | {test} | {run} |"
        )
    return head + "\n".join(lines)
