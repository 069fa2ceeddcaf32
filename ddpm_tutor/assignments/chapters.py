"""The exercises as the chapter notebooks define them: MyST ``:::{exercise}`` / ``:::{solution}`` blocks, and for
a code exercise the stub cell, the ``check_*`` call that grades it and the solution's Python block.

This module only reads the chapters; it is the single source that :mod:`.build` and :mod:`.guide` use.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository (the book's root)

# A MyST colon fence: 3 or more colons, {exercise} or {solution}, closed by the same number of colons.
_BLOCK = re.compile(
    r"^(?P<fence>:{3,})\{(?P<kind>exercise|solution)\}(?P<arg>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S
)
_OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
_PYTHON = re.compile(r"^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)


class ExerciseError(ValueError):
    """A chapter's exercise cannot be turned into an assignment; the message names the chapter and label."""


@dataclass(frozen=True)
class Exercise:
    """One exercise of one chapter. ``kind`` is "code" (graded by a checker) or "written" (graded by hand)."""

    label: str  # the MyST label, e.g. "ex-obj-posterior"; also the nbgrader grade id
    title: str  # may be empty (Part III's exercises have none)
    chapter: str  # the toc entry, e.g. "book/part1/02_objective"
    prompt: str  # the exercise's MyST text (without its options)
    solution: str  # the solution's MyST text (without its options)
    kind: str
    function: str = ""  # code: the learner's function, e.g. "my_q_posterior"
    stub: str = ""  # code: the chapter's stub of that function, verbatim
    solution_code: str = ""  # code: the solution's definition of that function, verbatim
    check: str = ""  # code: the checker's name, e.g. "check_posterior"
    check_module: str = ""  # code: where it lives, e.g. "ddpm_tutor.exercises.part1_early"


@dataclass(frozen=True)
class Chapter:
    """A chapter notebook: its toc entry, title, part folder, first (install) code cell and exercises."""

    entry: str
    title: str
    part: str  # "part1", "part2", ...
    install_cell: str
    exercises: tuple[Exercise, ...]

    @property
    def name(self) -> str:
        """The notebook's file stem, e.g. "02_objective" (unique within a part)."""
        return Path(self.entry).name


def chapter_entries(root: Path = ROOT) -> list[str]:
    """The toc entries of the chapters (book/part*/...), in the book's order, from _toc.yml."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = []
    for part in toc.get("parts", []):
        for chap in part.get("chapters", []) or []:
            if re.match(r"book/part\d+/", chap.get("file", "")):
                entries.append(chap["file"])
    return entries


def _split_options(body: str) -> tuple[dict[str, str], str]:
    """A directive body's leading ``:key: value`` lines, and the rest."""
    lines = body.split("\n")
    options = {}
    while lines and (m := _OPTION.match(lines[0])):
        options[m["key"]] = m["value"].strip()
        lines.pop(0)
    return options, "\n".join(lines).strip()


def _is_hidden(cell) -> bool:
    return "remove-cell" in cell.metadata.get("tags", [])


def _exercise_imports(cells) -> dict[str, str]:
    """name -> module of the checkers the notebook imports (``from ddpm_tutor.exercises.X import check_y``,
    or ``from ddpm_tutor.exercises import X`` for ``X.check_y``)."""
    found = {}
    for cell in cells:
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython magics (%pip) in the install cell
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ddpm_tutor.exercises":
                for alias in node.names:
                    found[alias.asname or alias.name] = f"ddpm_tutor.exercises.{alias.name}"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpm_tutor.exercises."):
                for alias in node.names:
                    found[alias.asname or alias.name] = node.module
    return found


def _check_calls(source: str) -> list[tuple[str, str | None, str]]:
    """(checker name, module alias or None, argument name) of each ``check_*(fn)`` call in ``source``."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name)):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id.startswith("check_"):
            calls.append((func.id, None, node.args[0].id))
        elif isinstance(func, ast.Attribute) and func.attr.startswith("check_") and isinstance(func.value, ast.Name):
            calls.append((func.attr, func.value.id, node.args[0].id))
    return calls


def _function_source(source: str, name: str) -> str:
    """The text of the top-level ``def name`` in ``source`` (dedented), or "" if there is none."""
    source = textwrap.dedent(source)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(source, node)
    return ""


def _signature(func_source: str) -> list[str]:
    node = ast.parse(func_source).body[0]
    return [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]


def read_chapter(entry: str, root: Path = ROOT) -> Chapter:
    """Parse one chapter notebook (toc entry without suffix) into its exercises, in order."""
    path = root / f"{entry}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    title = next(
        (
            c.source.lstrip()[2:].split("\n")[0].strip()
            for c in cells
            if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")
        ),
        Path(entry).name,
    )
    install = next((c.source for c in cells if c.cell_type == "code"), "")
    imports = _exercise_imports(cells)
    prompts, solutions, code_of = {}, {}, {}
    order = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        for m in _BLOCK.finditer(cell.source):
            options, text = _split_options(m["body"])
            if m["kind"] == "solution":
                solutions[m["arg"].strip()] = text
                continue
            label = options.get("label", "")
            if not label:
                raise ExerciseError(f"{entry}: an exercise without a :label: ({m['arg'].strip() or text[:40]!r})")
            if label in prompts:
                raise ExerciseError(f"{entry}: exercise label {label!r} is used twice")
            prompts[label] = (m["arg"].strip(), text)
            order.append(label)
            # A code exercise: the next cell is a visible code cell with the stub, and it or the visible code
            # cell after it calls a checker on the stub's function.
            nxt = [c for c in cells[i + 1 : i + 3] if c.cell_type == "code" and not _is_hidden(c)]
            if cells[i + 1 : i + 2] and nxt and nxt[0] is cells[i + 1]:
                code_of[label] = nxt
    exercises = []
    for label in order:
        title_, prompt = prompts[label]
        if label not in solutions:
            raise ExerciseError(f"{entry}: exercise {label!r} has no :::{{solution}} {label} block")
        solution = solutions[label]
        if label not in code_of:
            exercises.append(Exercise(label, title_, entry, prompt, solution, "written"))
            continue
        stub_cell = code_of[label][0].source
        calls = [c for cell in code_of[label] for c in _check_calls(cell.source)]
        if not calls:
            raise ExerciseError(f"{entry}: exercise {label!r} has a code cell but no check_*(...) call after it")
        check, alias, function = calls[0]
        module = imports.get(alias) if alias else imports.get(check)
        if not module:
            raise ExerciseError(f"{entry}: exercise {label!r}: no import of {alias or check} from ddpm_tutor.exercises")
        stub = _function_source(stub_cell, function)
        blocks = [b["code"] for b in _PYTHON.finditer(solution)]
        solution_code = next((s for s in map(lambda b: _function_source(b, function), blocks) if s), "")
        if not stub or not solution_code:
            missing = "stub cell" if not stub else "solution's ```python block"
            raise ExerciseError(f"{entry}: exercise {label!r}: the {missing} does not define {function}()")
        if _signature(stub) != _signature(solution_code):
            raise ExerciseError(
                f"{entry}: exercise {label!r}: the stub's {function}{tuple(_signature(stub))} and the solution's "
                f"{function}{tuple(_signature(solution_code))} take different arguments"
            )
        exercises.append(
            Exercise(label, title_, entry, prompt, solution, "code", function, stub, solution_code, check, module)
        )
    part = Path(entry).parent.name
    return Chapter(entry, title, part, install, tuple(exercises))


def read_book(root: Path = ROOT) -> list[Chapter]:
    """Every chapter of the toc, parsed."""
    return [read_chapter(e, root) for e in chapter_entries(root)]
