"""The student edition serves no solution: its notebooks (downloads, Colab links) lose every solution block and
every hidden check of a solution, still run, and the leak check finds what is left in a page or a notebook."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ddpm_tutor.assignments import student as S
from ddpm_tutor.assignments.__main__ import main as cli
from ddpm_tutor.assignments.chapters import _BLOCK, ROOT, chapter_entries

ENTRIES = chapter_entries()
BOOK_PRINTS = S.book_fingerprints()
SOL = {"tags": ["remove-cell", "solution"]}
CHECK_LINE = re.compile(r"^# (Hidden c|C)heck of (the solution|ex-)|^def _solution")


def _nb(entry: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / f"{entry}.ipynb", as_version=4)


def _text(nb) -> str:
    return " ".join(" ".join(c.source.split()) for c in nb.cells)


@pytest.mark.parametrize("entry", ENTRIES)
def test_student_notebook_has_no_solution_and_still_runs(entry):
    nb = _nb(entry)
    prints = S.fingerprints(nb)
    student = S.strip_solutions(nb)
    assert S.find_leaks(_text(student), {entry: sorted(prints)}) == []
    assert not any(_BLOCK.search(c.source) and "{solution}" in c.source for c in student.cells)
    assert all(S.SOLUTION_TAG not in c.metadata.get("tags", []) for c in student.cells)
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    # every exercise is still there, each followed by the line that says where its solution went
    n_ex = sum(
        m["kind"] == "exercise" for c in nb.cells if c.cell_type == "markdown" for m in _BLOCK.finditer(c.source)
    )
    assert _text(student).count(S.REMOVED) == n_ex > 0
    # the cells the student edition keeps are the chapter's, in order: only solutions went
    kept = [c for c in nb.cells if S.SOLUTION_TAG not in c.metadata.get("tags", [])]
    assert [c.get("id") for c in student.cells] == [c.get("id") for c in kept]
    # a removed check binds nothing a later kept cell reads, so the notebook runs top to bottom
    assert S.removed_names_used(nb) == []


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_solution_can_be_seen_by_the_leak_check(entry):
    """Each solution has lines of its own (fingerprints: what the check of a built edition looks for, in the
    whole book), and the chapter as written holds them all."""
    nb = _nb(entry)
    prints = set(BOOK_PRINTS[entry])
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for m in _BLOCK.finditer(cell.source):
            if m["kind"] == "solution":
                own = S._lines(m["body"]) & prints
                assert own, f"{entry}: solution {m['arg'].strip()} has no line the leak check can look for"
    assert len(S.find_leaks(_text(nb), {entry: sorted(prints)})) >= len(prints) > 0


def test_a_hidden_copy_of_a_solution_is_a_leak():
    """Removing the solution blocks alone is not enough: I.2's hidden check runs the solution's code, copied."""
    entry = "book/part1/02_objective"
    nb = _nb(entry)
    blocks_only = [S.without_solutions(c.source) for c in nb.cells]
    leaks = S.find_leaks(" ".join(" ".join(t.split()) for t in blocks_only), {entry: sorted(S.fingerprints(nb))})
    assert any("sched.at(" in leak for leak in leaks), leaks


@pytest.mark.parametrize("entry", ENTRIES)
def test_hidden_checks_of_a_solution_are_tagged(entry):
    """A hidden cell that says it checks a solution carries the tag, and a tagged cell is hidden in the book."""
    for i, cell in enumerate(_nb(entry).cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if CHECK_LINE.search(cell.source.split("\n")[0]):
            assert S.SOLUTION_TAG in tags, f"{entry}, cell {i}: checks a solution but is not tagged {S.SOLUTION_TAG!r}"
        if S.SOLUTION_TAG in tags:
            assert "remove-cell" in tags, f"{entry}, cell {i}: a solution's check must be hidden (remove-cell)"


def test_removed_names_used_finds_a_name_a_later_cell_needs():
    nb = new_notebook(
        cells=[
            new_code_cell("x = 1"),
            new_code_cell(
                "import math\nanswer = math.pi\ndef helper():\n    return 2", metadata={"tags": ["solution"]}
            ),
            new_code_cell("y = x + answer"),
            new_code_cell("helper = 3\nz = helper + math.e"),
        ]
    )
    assert S.removed_names_used(nb) == ["answer", "math"]


def test_fingerprints_leave_out_what_the_chapter_shows_anyway():
    nb = new_notebook(
        cells=[
            new_markdown_cell("The posterior mean is a weighted average of x_0 and x_t here."),
            new_code_cell("def f(x):\n    raise NotImplementedError  # write this function body"),
            new_code_cell("secret_constant = 0.123456789  # the hidden check", metadata={"tags": ["remove-cell"]}),
            new_markdown_cell(
                ":::{exercise}\n:label: ex-a\nDo it.\n:::\n\n:::{solution} ex-a\n:class: dropdown\n\n"
                "The posterior mean is a weighted average of x_0 and x_t here.\n"
                "Only the solution says that the answer is forty-two.\n"
                "```python\ndef f(x):\n    return secret_constant = 0.123456789\n```\n:::"
            ),
        ]
    )
    prints = S.fingerprints(nb)
    assert "Only the solution says that the answer is forty-two." in prints
    assert "The posterior mean is a weighted average of x_0 and x_t here." not in prints  # in the prose
    assert "return secret_constant = 0.123456789" in prints  # hidden cells are not visible text
    student = S.strip_solutions(nb)
    assert S.find_leaks(_text(student), {"x": sorted(prints)}) == []
    assert S.find_leaks("... :::{solution} ex-a ...", {}) == ["a :::{solution} block"]


def test_page_text_reads_html_and_notebooks(tmp_path):
    page = tmp_path / "p.html"
    page.write_text('<pre><span class="n">mu</span> <span class="o">=</span> a &amp;&lt;b\n\n  c</pre>')
    assert S.page_text(page) == "mu = a &<b c"
    nb = new_notebook(cells=[new_code_cell("x  =\n 1")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="printed  line")]
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert S.page_text(tmp_path / "n.ipynb") == "x = 1 printed line"


def test_write_config_hides_solutions_and_points_colab_at_the_branch(tmp_path):
    config, toc = S.write_config(tmp_path, tmp_path / "cache", "student")
    c, t = yaml.safe_load(config.read_text()), yaml.safe_load(toc.read_text())
    assert c["sphinx"]["config"]["hide_solutions"] is True
    assert c["repository"]["branch"] == "student" and c["html"]["use_repository_button"] is False
    assert c["execute"]["cache"] == str((tmp_path / "cache").resolve())
    assert "book/instructors.ipynb" in c["exclude_patterns"]
    files = [ch["file"] for p in t["parts"] for ch in p["chapters"]]
    assert "book/instructors" not in files and [f for f in files if f.startswith("book/part")] == ENTRIES
    for bad in ("main", "two words", ""):
        with pytest.raises(ValueError, match="branch"):
            S.write_config(tmp_path, tmp_path, bad)


def test_write_notebooks_and_replace_sources(tmp_path):
    written = S.write_notebooks(tmp_path / "nb")
    assert [p.relative_to(tmp_path / "nb").with_suffix("").as_posix() for p in written] == ENTRIES
    assert "Do not edit" in (tmp_path / "nb" / "README.md").read_text()
    html = tmp_path / "html"
    served = html / "_sources" / f"{ENTRIES[1]}.ipynb"
    served.parent.mkdir(parents=True)
    served.write_bytes((ROOT / f"{ENTRIES[1]}.ipynb").read_bytes())
    prints = S.book_fingerprints()
    assert S.check_site(html, prints)  # the chapter as written is served: a leak
    assert S.replace_sources(html, tmp_path / "nb") == [served]
    assert S.check_site(html, prints) == {}
    (html / "_sources" / "other.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="no student version"):
        S.replace_sources(html, tmp_path / "nb")
    with pytest.raises(ValueError, match="must be a folder"):
        S.write_notebooks(served)


def test_cli_student_reports_a_leak_in_a_built_page(tmp_path, capsys):
    html = tmp_path / "out" / "_build" / "html"
    (html / "book").mkdir(parents=True)
    (html / "index.html").write_text("<html></html>")
    prints = S.book_fingerprints()
    entry, line = next((e, lines[0]) for e, lines in prints.items() if lines)
    (html / "book" / "page.html").write_text(f"<p>{line}</p>")
    assert cli(["student", "--out", str(tmp_path / "out"), "--html", str(html)]) == 1
    err = capsys.readouterr().err
    assert "page.html: holds a solution" in err and entry in err
    saved = json.loads((tmp_path / "out" / "solution_fingerprints.json").read_text())
    assert saved == prints
    (html / "book" / "page.html").write_text("<p>nothing to see</p>")
    assert cli(["student", "--out", str(tmp_path / "out"), "--html", str(html)]) == 0
    with pytest.raises(SystemExit) as exc:
        cli(["student", "--out", str(tmp_path / "out"), "--html", str(tmp_path)])
    assert exc.value.code == 2 and "no index.html" in capsys.readouterr().err


def test_a_student_notebook_runs_top_to_bottom(tmp_path):
    """The removed checks leave a runnable chapter: execute one (budget ci) as a learner would."""
    S.write_notebooks(tmp_path)
    path = tmp_path / "book/part1/02_objective.ipynb"
    env = dict(os.environ, DDPM_TUTOR_BUDGET="ci", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=path.parent,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    nb = nbformat.read(path, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == [] and sum(bool(c.outputs) for c in nb.cells if c.cell_type == "code") > 3


def test_the_pages_workflow_pushes_the_notebooks_as_one_commit(tmp_path):
    """pages.yml's push step, run as written against a local bare repository: the branch holds the student
    notebooks only, in one commit, and a second run replaces it (the branch never grows a history)."""
    workflow = yaml.safe_load((ROOT / ".github/workflows/pages.yml").read_text())
    job = workflow["jobs"]["student-branch"]
    assert job["permissions"] == {"contents": "write"} and job["needs"] == "build"
    step = next(s for s in job["steps"] if s.get("working-directory") == "notebooks")
    build_steps = workflow["jobs"]["build"]["steps"]
    upload = next(s for s in build_steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "_build_student/notebooks"
    branch = workflow["env"]["STUDENT_BRANCH"]
    assert branch == "student" and "STUDENT_BRANCH ?= student" in (ROOT / "Makefile").read_text()
    remote = tmp_path / "owner" / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    env = dict(
        os.environ,
        STUDENT_BRANCH=branch,
        TOKEN="t",
        GITHUB_SHA="abc123",
        GITHUB_SERVER_URL=f"file://{tmp_path}",
        GITHUB_REPOSITORY="owner/repo",
        GIT_CONFIG_GLOBAL="/dev/null",
    )
    for run in range(2):
        work = tmp_path / f"run{run}" / "notebooks"
        S.write_notebooks(work)
        subprocess.run(["bash", "-e", "-c", step["run"]], cwd=work, env=env, check=True, capture_output=True)
    log = subprocess.run(["git", "-C", str(remote), "log", "--format=%s", branch], capture_output=True, text=True)
    assert log.stdout.splitlines() == ["The chapters without their solutions, from abc123"]
    files = subprocess.run(
        ["git", "-C", str(remote), "ls-tree", "-r", "--name-only", branch], capture_output=True, text=True
    ).stdout.split()
    assert sorted(files) == sorted(["README.md"] + [f"{e}.ipynb" for e in ENTRIES])
