"""The book's configuration agrees with the package, and every chapter follows the book's conventions.

Conventions checked for every notebook in _toc.yml (and book/_template.ipynb, the one to copy):
committed without outputs; first code cell = the Colab install cell (tagged remove-cell, installing from
ddpm_tutor.HOME_URL); a Markdown title; the budget announced; only known tags; ipywidgets cells tagged
remove-output and preceded by the live-only note; at least one self-check cell (tagged self-check, or
asserting, or calling a ddpm_tutor.exercises check_ function); no gated solutions
(solution-start/-end break the student edition with sphinx-exercise 1.2). Also: every page in book/ is in
the toc or excluded, and every cited key is in book/references.bib.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

import ddpm_tutor

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
TEMPLATE = "book/_template.ipynb"

ALLOWED_TAGS = {
    "remove-cell",
    "remove-input",
    "remove-output",
    "hide-cell",
    "hide-input",
    "hide-output",
    "full-width",
    "margin",
    "self-check",
    "solution",  # a hidden check of a solution: left out of the student edition's notebooks
    "raises-exception",
    "skip-execution",
    "nbval-ignore-output",
    "nbval-check-output",
    "nbval-skip",
    "nbval-raises-exception",
}
WIDGET_CODE = re.compile(r"\bipywidgets\b|\bwidgets\.|\binteract(ive)?\(|\blive_plot\(")
SELF_CHECK = re.compile(r"^\s*assert\b|\bcheck_\w+\(", re.MULTILINE)
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if key in node:
                files.append(node[key])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                files.extend(_toc_files(child))
    return files


def _source(entry: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (ROOT / (entry + suffix)).exists():
            return ROOT / (entry + suffix)
    if (ROOT / entry).exists():
        return ROOT / entry
    raise FileNotFoundError(entry)


TOC_FILES = _toc_files(TOC)
NOTEBOOKS = [e for e in TOC_FILES if (ROOT / (e + ".ipynb")).exists()] + [TEMPLATE[: -len(".ipynb")]]


def test_repository_url_is_the_package_home():
    assert CONFIG["repository"]["url"].rstrip("/") == ddpm_tutor.HOME_URL
    assert CONFIG["repository"]["branch"] == "main"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert ddpm_tutor.PIP_SPEC == f"ddpm-tutor @ git+{ddpm_tutor.HOME_URL}"


def test_execution_and_math_settings():
    assert CONFIG["execute"]["execute_notebooks"] == "cache"
    assert CONFIG["execute"]["allow_errors"] is False
    sphinx_cfg = CONFIG["sphinx"]["config"]
    # MathJax comes from the site itself (make mathjax copies it into _assets/mathjax)
    assert not sphinx_cfg["mathjax_path"].startswith(("http:", "https:", "//"))
    assert "_assets" in sphinx_cfg["html_static_path"]
    assert sphinx_cfg["nb_ipywidgets_js"] == {}
    assert TEMPLATE in CONFIG["exclude_patterns"]
    assert not (ROOT / "_static").exists(), "jupyter-book loads every .js in a root _static/ on every page"


def test_toc_lists_existing_files_once_and_not_the_template():
    assert TOC["format"] == "jb-book" and TOC["root"] == "book/intro"
    assert len(TOC_FILES) == len(set(TOC_FILES)), "a page is listed twice in _toc.yml"
    for entry in TOC_FILES:
        assert not Path(entry).suffix, f"write toc entries without suffix: {entry}"
        _source(entry)  # raises if missing
    assert TEMPLATE[: -len(".ipynb")] not in TOC_FILES
    assert "book/references" in TOC_FILES


def test_every_page_in_book_is_in_the_toc_or_excluded():
    from sphinx.util.matching import Matcher

    excluded = Matcher(CONFIG.get("exclude_patterns", []) + ["_build", "**.ipynb_checkpoints"])
    listed = {str(_source(e).relative_to(ROOT)) for e in TOC_FILES}
    stray = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "book").rglob("*"))
        if p.suffix in (".md", ".ipynb")
        and not excluded(str(p.relative_to(ROOT)))
        and str(p.relative_to(ROOT)) not in listed
    ]
    assert not stray, f"pages in book/ neither in _toc.yml nor excluded in _config.yml: {stray}"


def test_cited_keys_are_in_the_bibliography():
    bib = (ROOT / CONFIG["bibtex_bibfiles"][0]).read_text()
    keys = set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", bib))
    assert len(keys) >= 20
    missing = {}
    for p in sorted((ROOT / "book").rglob("*")):
        if p.suffix == ".md":
            text = p.read_text()
        elif p.suffix == ".ipynb":
            text = "\n".join(c.source for c in nbformat.read(p, as_version=4).cells if c.cell_type == "markdown")
        else:
            continue
        for group in CITE.findall(text):
            for key in (k.strip() for k in group.split(",")):
                if key not in keys:
                    missing.setdefault(str(p.relative_to(ROOT)), []).append(key)
    assert not missing, f"cited keys missing from references.bib: {missing}"


@pytest.fixture(params=NOTEBOOKS, ids=lambda e: e)
def notebook(request):
    path = ROOT / (request.param + ".ipynb")
    return path, nbformat.read(path, as_version=4)


# Chapters (and the template) follow the chapter rules; other notebook pages (the instructor's guide) do not.
CHAPTER_NOTEBOOKS = [e for e in NOTEBOOKS if e.startswith("book/part") or e == TEMPLATE[: -len(".ipynb")]]


@pytest.fixture(params=CHAPTER_NOTEBOOKS, ids=lambda e: e)
def chapter(request):
    path = ROOT / (request.param + ".ipynb")
    return path, nbformat.read(path, as_version=4)


def test_notebook_is_valid_and_has_no_outputs(notebook):
    path, nb = notebook
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i}: commit notebooks without outputs"
            assert cell.execution_count is None, f"{path.name} cell {i}: clear the execution count"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the metadata"


def test_first_code_cell_is_the_colab_install_cell(notebook):
    path, nb = notebook
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    first = code[0]
    assert "remove-cell" in first.metadata.get("tags", []), f"{path.name}: tag the install cell remove-cell"
    assert '"google.colab" in sys.modules' in first.source
    assert "%pip install" in first.source
    assert ddpm_tutor.HOME_URL in first.source and ddpm_tutor.PIP_SPEC in first.source


def test_chapter_structure_and_tags(chapter):
    path, nb = chapter
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    assert markdown and markdown[0].source.lstrip().startswith("# "), f"{path.name}: start with a # title"
    sources = "\n".join(c.source for c in nb.cells)
    assert re.search(r"\bannounce\(", sources), f"{path.name}: print the budget with ddpm_tutor.budget.announce"
    assert "solution-start" not in sources, f"{path.name}: gated solutions break the student edition"
    self_checks = 0
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        unknown = set(tags) - ALLOWED_TAGS
        assert not unknown, f"{path.name} cell {i}: unknown tags {unknown} (typo?)"
        if cell.cell_type != "code":
            continue
        self_checks += "self-check" in tags or bool(SELF_CHECK.search(cell.source))
        if WIDGET_CODE.search(cell.source) and i > 0:
            assert {"remove-output", "remove-cell"} & set(tags), (
                f"{path.name} cell {i}: a live widget cell must be tagged remove-output"
            )
            before = nb.cells[i - 1]
            assert before.cell_type == "markdown" and "Live only" in before.source and "{note}" in before.source, (
                f"{path.name} cell {i}: put the live-only note (:::{{note}} **Live only.** ...) right before it"
            )
    assert self_checks >= 1, f"{path.name}: add a self-check cell (asserts what the chapter claims)"
