"""Release and grade a course written by :mod:`.build`, with nbgrader's own steps (generate_assignment,
autograde, generate_feedback) run locally through its Python API, and a check of each submission first.

The check turns the submissions nbgrader would mishandle (a file that is not a notebook, another chapter's
notebook, an exercise cell whose id was changed, a stray or a missing notebook) into one clear message each,
and leaves that submission ungraded instead of crashing or scoring it 0 in silence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .build import COURSE_ID


@dataclass
class Result:
    """One student's graded assignment: points by grade id, totals, feedback files, or the problems found."""

    student: str
    assignment: str
    score: float = 0.0
    max_score: float = 0.0
    manual_max: float = 0.0  # points of the written answers, left to grade by hand
    grades: dict[str, float | None] = field(default_factory=dict)  # grade id -> points (None: not graded yet)
    feedback: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def graded(self) -> bool:
        return not self.problems


def _config(course: Path, timeout: int | None):
    from traitlets.config.loader import PyFileConfigLoader

    cfg_file = course / "nbgrader_config.py"
    if not cfg_file.is_file():
        raise ValueError(f"course: no nbgrader_config.py in {course}; write the course with `build --out {course}`")
    config = PyFileConfigLoader(cfg_file.name, path=str(course)).load_config()
    config.CourseDirectory.root = str(course.resolve())
    if timeout is not None:
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
            raise ValueError(f"timeout must be a whole number of seconds >= 1, got {timeout!r}")
        config.Execute.timeout = timeout
    return config


def alembic_head() -> str:
    """The gradebook schema's revision, read in-process with alembic's API.

    nbgrader gets it by running the ``alembic heads`` command when it creates a gradebook: a subprocess that took
    2-10 s on the shared 2-core machine and fails when the environment's bin/ is not on PATH.
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    cfg = Config()
    cfg.set_main_option("script_location", ALEMBIC_DIR)
    return ScriptDirectory.from_config(cfg).get_current_head()


def _api(course: Path, timeout: int | None = None):
    import nbgrader.api
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    config = _config(course, timeout)
    nbgrader.api.get_alembic_version = alembic_head
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def _run(step: str, result: dict) -> None:
    if not result.get("success"):
        raise RuntimeError(f"nbgrader {step} failed:\n{result.get('error') or ''}\n{result.get('log') or ''}")


def release(course: Path, assignments: list[str] | None = None) -> list[Path]:
    """``nbgrader generate_assignment`` for each assignment of ``course/source`` (or those named); the student
    notebooks land in ``course/release``. Returns them."""
    course = Path(course)
    names = sorted(p.name for p in (course / "source").iterdir() if p.is_dir()) if (course / "source").is_dir() else []
    if assignments:
        unknown = [a for a in assignments if a not in names]
        if unknown:
            raise ValueError(f"assignment: unknown {unknown} in {course / 'source'}; expected some of {names}")
        names = list(assignments)
    if not names:
        raise ValueError(f"course: no assignments in {course / 'source'}; write them with `build --out {course}`")
    api = _api(course)
    for name in names:
        _run(f"generate_assignment {name}", api.generate_assignment(name, force=True, create=True))
    return sorted((course / "release").glob("*/*.ipynb"))


def _grade_ids(nb) -> list[str]:
    return [
        c.metadata["nbgrader"]["grade_id"]
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade_id")
        and (
            c.metadata["nbgrader"].get("grade")
            or c.metadata["nbgrader"].get("solution")
            or c.metadata["nbgrader"].get("task")
        )
    ]


def check_submission(path: Path, source: Path) -> list[str]:
    """Why the notebook at ``path`` cannot be graded against the source notebook ``source`` ([] if it can)."""
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # nbformat raises several kinds (NotJSONError, ValidationError, UnicodeError ...)
        reason = str(err).split("\n")[0][:120]
        return [
            f"{path}: not a Jupyter notebook ({type(err).__name__}: {reason}); submit the .ipynb the assignment "
            f"gave you"
        ]
    want = nbformat.read(source, as_version=4)
    got_chapter = nb.metadata.get("ddpm_tutor", {}).get("chapter")
    want_chapter = want.metadata["ddpm_tutor"]["chapter"]
    if got_chapter and got_chapter != want_chapter:
        return [
            f"{path}: this is the notebook of chapter {got_chapter}, not of {want_chapter}; submit "
            f"{source.name} of this assignment under its own name"
        ]
    have, need = _grade_ids(nb), _grade_ids(want)
    missing = [g for g in need if g not in have]
    extra = [g for g in have if g not in need]
    if missing:
        renamed = f"; unknown ids {extra}: was an exercise id renamed?" if extra else ""
        return [
            f"{path}: exercise cells {missing} are missing{renamed} Restore the cells with their ids "
            f"(metadata nbgrader.grade_id), e.g. from a fresh copy of {source.name}"
        ]
    return []


def check_submissions(course: Path, assignment: str, student: str) -> list[str]:
    """Every problem of one student's submitted folder: bad notebooks, strays and missing notebooks."""
    course = Path(course)
    folder = course / "submitted" / student / assignment
    sources = {p.name: p for p in (course / "source" / assignment).glob("*.ipynb")}
    if not folder.is_dir():
        return [f"{folder}: no submission of {assignment} by {student}"]
    problems = []
    for path in sorted(folder.glob("*.ipynb")):
        if path.name not in sources:
            problems.append(
                f"{path}: not a notebook of {assignment} (expected {sorted(sources)}); rename it to the "
                f"notebook it answers, or remove it"
            )
        else:
            problems += check_submission(path, sources[path.name])
    for name in sorted(set(sources) - {p.name for p in folder.glob("*.ipynb")}):
        problems.append(f"{folder / name}: missing (the assignment has {sorted(sources)})")
    return problems


def grade(
    course: Path, assignment: str, students: list[str] | None = None, timeout: int | None = None, feedback: bool = True
) -> list[Result]:
    """Check, autograde and (with ``feedback``) write the feedback of each student's ``submitted/<student>/
    <assignment>``. A submission with problems is not graded: its Result lists why."""
    from nbgrader.api import Gradebook

    course = Path(course)
    if not (course / "source" / assignment).is_dir():
        raise ValueError(f"assignment: no {course / 'source' / assignment}")
    found = sorted(p.parent.name for p in (course / "submitted").glob(f"*/{assignment}") if p.is_dir())
    if students:
        unknown = [s for s in students if s not in found]
        if unknown:
            raise ValueError(f"student: no submission of {assignment} by {unknown} in {course / 'submitted'}")
        found = list(students)
    api = _api(course, timeout)
    db_url = api.coursedir.db_url
    results = []
    for student in found:
        res = Result(student, assignment, problems=check_submissions(course, assignment, student))
        if res.problems:
            results.append(res)
            continue
        _run(f"autograde {assignment} {student}", api.autograde(assignment, student, force=True, create=True))
        if feedback:
            _run(f"generate_feedback {assignment} {student}", api.generate_feedback(assignment, student, force=True))
            res.feedback = sorted((course / "feedback" / student / assignment).glob("*.html"))
        with Gradebook(db_url, COURSE_ID) as gb:
            sub = gb.find_submission(assignment, student)
            for nb in sub.notebooks:
                for g in nb.grades:
                    manual = g.cell_type == "markdown"  # written answers: task cells, graded by hand
                    res.grades[g.name] = g.score if not (manual and g.needs_manual_grade) else None
                    res.max_score += g.max_score
                    res.manual_max += g.max_score if manual else 0
                    res.score += g.score or 0
        results.append(res)
    return results
