"""The nbgrader course built from the chapters: every exercise is in it once, the book's solutions pass their
autograder tests and the stubs do not, the released notebooks hold no solution, and grading with nbgrader's
own steps scores full marks, a wrong function, an untouched notebook and an endless loop as it should,
with the checker's diagnosis in the feedback. Bad submissions get a message each and are not graded.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

import nbformat
import pytest

from ddpm_tutor.assignments import EXERCISES, build_course, chapter_notebook, grade, read_book, read_chapter, release
from ddpm_tutor.assignments.__main__ import main
from ddpm_tutor.assignments.build import to_markdown
from ddpm_tutor.assignments.chapters import ROOT
from ddpm_tutor.exercises import CheckFailed

BOOK = read_book()
CHAPTER = "book/part2/05_progressive_coding"  # two code and two written exercises; its checkers take milliseconds
ASSIGNMENT, NOTEBOOK = "part2-05_progressive_coding", "05_progressive_coding.ipynb"


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _release(nb):
    """What generate_assignment does to the text of a notebook: nbgrader's own ClearSolutions and ClearMarkScheme."""
    from nbgrader.preprocessors import ClearMarkScheme, ClearSolutions

    nb = copy.deepcopy(nb)
    nb, res = ClearSolutions(code_stub={"python": "# YOUR CODE HERE\nraise NotImplementedError()"}).preprocess(nb, {})
    return ClearMarkScheme().preprocess(nb, res)[0]


def _run_cells(cells) -> dict:
    """Execute code cells in one namespace, as a kernel would (the Colab install cell, IPython syntax, skipped)."""
    ns: dict = {}
    for cell in cells:
        if cell.cell_type == "code" and not _nbgrader(cell).get("grade_id", "").endswith("-setup"):
            exec(compile(cell.source, _nbgrader(cell).get("grade_id", "cell"), "exec"), ns)
    return ns


def _solution_lines(ex) -> list[str]:
    """The solution's own lines: those the released notebook must not show (the stub's lines may stay)."""
    stub = {line.strip() for line in ex.stub.split("\n")}
    body = ex.solution_code.split("\n")[1:]
    return [line.strip() for line in body if line.strip() and line.strip() not in stub and len(line.strip()) > 8]


def test_catalog_names_exactly_the_exercises_of_the_chapters():
    labels = [ex.label for chap in BOOK for ex in chap.exercises]
    assert len(labels) == len(set(labels)), "an exercise label is used twice in the book"
    assert set(labels) == set(EXERCISES), (
        f"catalog.py and the chapters disagree: only in the chapters {sorted(set(labels) - set(EXERCISES))}, "
        f"only in catalog.py {sorted(set(EXERCISES) - set(labels))}"
    )
    for label, meta in EXERCISES.items():
        assert meta.goal.strip() and isinstance(meta.points, int) and meta.points >= 1, label
    kinds = {ex.label: ex.kind for chap in BOOK for ex in chap.exercises}
    # every visible check_* call on a learner's function in the chapters is a code exercise here
    calls = 0
    for chap in BOOK:
        nb = nbformat.read(ROOT / f"{chap.entry}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and "remove-cell" not in cell.metadata.get("tags", []):
                calls += len(re.findall(r"\bcheck_\w+\((?!_)\w+\)", cell.source))
    assert sum(k == "code" for k in kinds.values()) == calls >= 18


@pytest.mark.parametrize(
    "chapter", [c for c in BOOK if any(e.kind == "code" for e in c.exercises)], ids=lambda c: c.entry
)
def test_solutions_pass_their_tests_and_stubs_score_zero(chapter):
    nb = chapter_notebook(chapter)
    nbformat.validate(nb)
    _run_cells(nb.cells)  # the instructor's notebook: every test cell passes with the book's solution
    released = _release(nb)
    for ex in (e for e in chapter.exercises if e.kind == "code"):
        cells = [c for c in released.cells if _nbgrader(c).get("grade_id") in (ex.label, f"{ex.label}-check")]
        assert [_nbgrader(c).get("points") for c in cells] == [None, EXERCISES[ex.label].points]
        imports = [c for c in released.cells if _nbgrader(c).get("grade_id", "").endswith("-imports")]
        with pytest.raises(AssertionError, match=f"{ex.function}: not attempted yet"):
            _run_cells(imports + cells)
        shown = "\n".join(c.source for c in released.cells)
        leaked = [line for line in _solution_lines(ex) if line in shown]
        assert not leaked, f"{ex.label}: the released notebook shows solution lines {leaked}"


def test_written_exercises_are_manually_graded_tasks_with_the_solution_as_rubric():
    chapter = read_chapter(CHAPTER)
    nb = chapter_notebook(chapter)
    written = [e for e in chapter.exercises if e.kind == "written"]
    assert written
    released = "\n".join(c.source for c in _release(nb).cells)
    for ex in written:
        (task,) = [c for c in nb.cells if _nbgrader(c).get("grade_id") == ex.label]
        meta = _nbgrader(task)
        assert meta["task"] and meta["points"] == EXERCISES[ex.label].points and not meta.get("grade")
        rubric = to_markdown(ex.solution)
        assert rubric in task.source and "BEGIN MARK SCHEME" in task.source
        first = rubric.split("\n")[0]
        assert first not in released and to_markdown(ex.prompt).split("\n")[0] in released


def test_to_markdown_removes_the_myst_roles():
    text = r"See {eq}`eq-a`, {doc}`../part1/06_schedule`, {cite:t}`ho2020` and {glue:text}`p_x:.2f`."
    out = to_markdown(text + "\n$$\nx\n$$ (eq-b)")
    assert out == (
        "See eq. *eq-a*, the chapter *06_schedule*, [ho2020] and (a number the chapter computes).\n$$\nx\n$$"
    )


def test_build_by_chapter_or_part(tmp_path):
    by_chapter = build_course(tmp_path / "c", "chapter")
    assert list(by_chapter) == [f"{c.part}-{c.name}" for c in BOOK]
    by_part = build_course(tmp_path / "p", "part")
    assert {k: [p.stem for p in v] for k, v in by_part.items()} == {
        part: [c.name for c in BOOK if c.part == part] for part in ("part1", "part2", "part3")
    }
    from traitlets.config.loader import PyFileConfigLoader

    shutil.move(tmp_path / "p", tmp_path / "moved")  # the course folder can move
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(tmp_path / "moved")).load_config()
    assert cfg.Execute.timeout == 60 and cfg.CourseDirectory.root == str(tmp_path / "moved")
    assert cfg.CourseDirectory.db_url == f"sqlite:///{tmp_path / 'moved' / 'gradebook.db'}"
    assert cfg.ClearSolutions.code_stub == {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    with pytest.raises(ValueError, match="by must be one of"):
        build_course(tmp_path / "x", "week")
    with pytest.raises(ValueError, match=r"chapters: unknown \['part9/01_x'\]"):
        build_course(tmp_path / "x", "chapter", ["part9/01_x"])


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["grade", "--course", str(tmp_path / "nowhere"), "--assignment", "a"])
    assert err.value.code == 2 and "argument --course: no nbgrader_config.py" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["build", "--by", "week"])
    assert err.value.code == 2 and "invalid choice: 'week'" in capsys.readouterr().err
    assert main(["build", "--out", str(tmp_path / "c"), "--chapters", "part2/05_progressive_coding"]) == 0
    with pytest.raises(SystemExit) as err:
        main(["release", "--course", str(tmp_path / "c"), "--assignment", "part9"])
    assert err.value.code == 2 and "assignment: unknown ['part9']" in capsys.readouterr().err


def test_alembic_head_is_what_the_alembic_command_says():
    from nbgrader.dbutil import _temp_alembic_ini

    from ddpm_tutor.assignments.grade import alembic_head

    alembic = Path(sys.executable).with_name("alembic")
    with _temp_alembic_ini("sqlite:////tmp/unused.db") as ini:
        out = subprocess.run([str(alembic), "-c", ini, "heads"], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == alembic_head()


def _answer(course: Path, answers: dict[str, str]):
    """The released notebook with the given solution cells (grade id -> source) filled in."""
    nb = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if _nbgrader(cell).get("grade_id") in answers:
            cell.source = answers[_nbgrader(cell)["grade_id"]]
    return nb


def _submit(course: Path, student: str, nb, name: str = NOTEBOOK) -> Path:
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, str):
        (folder / name).write_text(nb)
    else:
        nbformat.write(nb, folder / name)
    return folder / name


def test_grading_end_to_end_with_nbgrader(tmp_path):
    course = tmp_path / "course"
    build_course(course, "chapter", [CHAPTER], timeout=10)  # 10 s per cell: the endless loop's cost
    released = release(course)
    assert released == [course / "release" / ASSIGNMENT / NOTEBOOK]
    chapter = read_chapter(CHAPTER)
    code = [e for e in chapter.exercises if e.kind == "code"]
    shown = "\n".join(c.source for c in nbformat.read(released[0], as_version=4).cells)
    for ex in chapter.exercises:
        leaked = _solution_lines(ex) if ex.kind == "code" else [to_markdown(ex.solution).split("\n")[0]]
        assert not [line for line in leaked if line in shown], ex.label
    assert "BEGIN SOLUTION" not in shown and "MARK SCHEME" not in shown and "Rubric" not in shown

    source = nbformat.read(course / "source" / ASSIGNMENT / NOTEBOOK, as_version=4)
    solutions = {_nbgrader(c)["grade_id"]: c.source for c in source.cells if _nbgrader(c).get("solution")}
    rate, post = code[0], code[1]
    assert (rate.label, post.label) == ("ex-p2code-rate", "ex-p2code-post")
    # bob includes kl[:, i] itself, a mistake the checker knows; dave's function never returns
    wrong = "def cumulative_rate(prior, kl):\n    return prior[:, None] + kl.flip(1).cumsum(1).flip(1)\n"
    endless = "def cumulative_rate(prior, kl):\n    while True:\n        pass\n"
    _submit(course, "alice", _answer(course, solutions))
    _submit(course, "bob", _answer(course, {**solutions, rate.label: wrong}))
    _submit(course, "carol", _answer(course, {}))
    _submit(course, "dave", _answer(course, {**solutions, rate.label: endless}))
    # bad input: not a notebook, another chapter's notebook under this name, a renamed exercise id, a stray file
    _submit(course, "erin", "def cumulative_rate(prior, kl): ...\n")
    other = chapter_notebook(read_chapter("book/part2/01_elbo"))
    _submit(course, "frank", other)
    renamed = _answer(course, solutions)
    next(c for c in renamed.cells if _nbgrader(c).get("grade_id") == rate.label).metadata.nbgrader["grade_id"] = "rate"
    _submit(course, "gina", renamed)
    _submit(course, "hank", _answer(course, solutions))
    _submit(course, "hank", other, name="01_elbo.ipynb")

    bad = {r.student: r for r in grade(course, ASSIGNMENT, ["erin", "frank", "gina", "hank"])}
    assert all(not r.graded and r.score == 0 and not r.grades for r in bad.values())
    assert re.search(rf"erin/{ASSIGNMENT}/{NOTEBOOK}: not a Jupyter notebook \(NotJSONError", bad["erin"].problems[0])
    assert (
        f"this is the notebook of chapter book/part2/01_elbo, not of {CHAPTER}; submit {NOTEBOOK}"
        in bad["frank"].problems[0]
    )
    assert (
        "exercise cells ['ex-p2code-rate'] are missing; unknown ids ['rate']: was an exercise id renamed?"
        in bad["gina"].problems[0]
    )
    assert bad["hank"].problems == [
        f"{course}/submitted/hank/{ASSIGNMENT}/01_elbo.ipynb: not a notebook of "
        f"{ASSIGNMENT} (expected ['{NOTEBOOK}']); rename it to the notebook it answers, "
        "or remove it"
    ]
    assert not (course / "autograded").exists(), "a bad submission reached nbgrader"
    for student in bad:
        shutil.rmtree(course / "submitted" / student)

    (bob,) = grade(course, ASSIGNMENT, ["bob"])  # with feedback
    res = {r.student: r for r in grade(course, ASSIGNMENT, ["alice", "carol", "dave"], feedback=False)}
    res["bob"] = bob
    points = {e.label: EXERCISES[e.label].points for e in chapter.exercises}
    auto = points[rate.label] + points[post.label]
    manual = sum(points[e.label] for e in chapter.exercises if e.kind == "written")
    for r in res.values():
        assert r.graded and r.max_score == auto + manual and r.manual_max == manual
        assert all(r.grades[e.label] is None for e in chapter.exercises if e.kind == "written")  # for a person
    check = {e.label: f"{e.label}-check" for e in code}
    assert res["alice"].score == auto
    assert res["bob"].score == auto - points[rate.label]
    assert res["bob"].grades[check[rate.label]] == 0 and res["bob"].grades[check[post.label]] == points[post.label]
    assert res["carol"].score == 0 and res["carol"].grades[check[post.label]] == 0
    assert res["dave"].score == auto - points[rate.label]

    feedback = unescape(re.sub(r"<[^>]+>", "", bob.feedback[0].read_text()))
    diagnosis = re.search(r"CheckFailed: (cumulative_rate: .*)", feedback)
    assert diagnosis and "first at index (0, 1): got" in diagnosis[1]
    assert "It looks like you included kl[:, i] itself" in diagnosis[1]
    with pytest.raises(CheckFailed) as direct:  # the feedback says what the checker says, word for word
        from ddpm_tutor.exercises.part2_late import check_cumulative_rate

        check_cumulative_rate(lambda prior, kl: prior[:, None] + kl.flip(1).cumsum(1).flip(1))
    assert diagnosis[1].strip() == str(direct.value)

    graded = nbformat.read(course / "autograded" / "dave" / ASSIGNMENT / NOTEBOOK, as_version=4)
    (loop_test,) = [c for c in graded.cells if _nbgrader(c).get("grade_id") == check[rate.label]]
    assert "CellTimeoutError" in {o.get("ename") for o in loop_test.outputs}


def test_guide_table_is_made_from_the_chapters_and_measured_times(tmp_path):
    from jupyter_cache import get_cache

    from ddpm_tutor.assignments import guide

    rows = guide.exercise_rows(cache=tmp_path / "no-cache")
    assert [r["id"] for r in rows] == [e.label for c in BOOK for e in c.exercises]
    by_id = {r["id"]: r for r in rows}
    assert by_id["ex-obj-posterior"]["chapter"] == "I.2" and by_id["ex-guided-code"]["chapter"] == "III.4"
    for r in rows:
        assert r["points"] == EXERCISES[r["id"]].points and r["goal"] == EXERCISES[r["id"]].goal
        assert r["chapter_min"] is None  # no cache: nothing is invented
        assert (r["test_s"] is not None) == (r["kind"] == "code") == (r["graded"] == "auto")
        assert r["test_s"] is None or 0 < r["test_s"] < 5
    table = guide.exercise_table(rows, budget="book")
    assert table.count("\n") == len(rows) + 1 and "chapter run (min, budget book)" in table
    assert "q(x_t &#124; x_s)" in table  # a | in a goal does not split the row

    # a chapter's run time comes from the cache record of its *current* code, and only from that
    chapter = read_chapter(CHAPTER)
    copy_root = tmp_path / "book_copy"
    (copy_root / CHAPTER).parent.mkdir(parents=True)
    shutil.copy(ROOT / f"{CHAPTER}.ipynb", copy_root / f"{CHAPTER}.ipynb")
    cache = get_cache(tmp_path / "jc")
    cache.cache_notebook_file(copy_root / f"{CHAPTER}.ipynb", data={"execution_seconds": 90.0}, check_validity=False)
    assert guide.chapter_seconds([chapter], tmp_path / "jc", copy_root) == {CHAPTER: 90.0}
    nb = nbformat.read(copy_root / f"{CHAPTER}.ipynb", as_version=4)
    next(c for c in nb.cells if c.cell_type == "code").source += "\n# changed"
    nbformat.write(nb, copy_root / f"{CHAPTER}.ipynb")
    assert guide.chapter_seconds([chapter], tmp_path / "jc", copy_root) == {CHAPTER: None}
