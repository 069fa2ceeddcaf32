"""Colab's environment, checked without Colab: installing the package changes none of its preinstalled packages,
and the chapters' live widgets work on its ipywidgets 7.7.1.

What Colab preinstalls is tests/colab_constraints.txt (versions read in Colab's published pip freeze).

- pip's resolver runs on pyproject.toml's dependencies (what the chapters' install cell,
  ``%pip install "ddpm-tutor @ git+..."``, asks for) in a stand-in for Colab's site-packages: one empty distribution
  per constrained package, at Colab's version, so pip keeps what satisfies the requirement as it would in Colab.
- Every ``viz.live_plot`` cell of the book runs in .venv/ipyw7 (a venv over .venv's packages with Colab's
  ipywidgets, IPython, traitlets and ipykernel in front, rebuilt when their pins change), with only the earlier
  statements it needs; moving its first slider must replace its figure by a different one.

Both need the package registry; when it cannot be reached they skip and say so.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "tests" / "colab_constraints.txt"
WIDGET_ENV = ROOT / ".venv" / "ipyw7"  # kept between runs; inside .venv, which git and the book build ignore
# Colab's widget stack, installed in front of .venv's packages (versions from CONSTRAINTS); the last three are
# IPython 7's own dependencies, which .venv's IPython no longer has
WIDGET_STACK = (
    "ipywidgets",
    "widgetsnbextension",
    "jupyterlab-widgets",
    "ipython-genutils",
    "ipython",
    "traitlets",
    "ipykernel",
    "decorator",
    "backcall",
    "pickleshare",
)
# bounded waits, so that an unreachable registry makes a skip in about a minute, not pip's default retries
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--timeout", "30", "--retries", "1"]


def _colab() -> tuple[dict[str, str], str, set[str]]:
    """Colab's pins (canonical name -> version), its Python version and the packages our install may add."""
    pins, python, may_add = {}, None, set()
    for line in CONSTRAINTS.read_text().splitlines():
        if line.startswith("# colab-python:"):
            python = line.split(":", 1)[1].strip()
        elif line.startswith("# not-preinstalled:"):
            may_add = {canonicalize_name(n) for n in line.split(":", 1)[1].split()}
        elif line.strip() and not line.startswith("#"):
            req = Requirement(line.split("#", 1)[0])
            (spec,) = req.specifier
            assert spec.operator == "==", f"{CONSTRAINTS.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    assert python and may_add and pins, f"{CONSTRAINTS.name} lacks its colab-python / not-preinstalled lines or pins"
    return pins, python, may_add


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _skip_if_registry_unreachable(name: str, why: str) -> None:
    """Skip when pip cannot even find ``name`` in the registry (then ``why`` is no verdict on our packages)."""
    probe = subprocess.run(
        [*PIP, "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet", name],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"the package registry cannot be reached (pip cannot find {name}: {last}); {why}")


def _stand_in_for_colab(where: Path, pins: dict[str, str]) -> Path:
    """A venv whose site-packages holds one empty distribution per pin (Colab's version); returns its python."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for name, version in pins.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return python


def _install_in_colab(tmp_path: Path, requirements: list[str], *, constrained: bool = True):
    """pip's dry run of installing ``requirements`` into the stand-in: (pip's process, {name: version it installs})."""
    pins, _, _ = _colab()
    python = _stand_in_for_colab(tmp_path / "colab", pins)
    report = tmp_path / "report.json"
    cmd = [*PIP, "--python", str(python), "install", "--dry-run", "--quiet", "--report", str(report)]
    proc = subprocess.run(
        [*cmd, *(["-c", str(CONSTRAINTS)] if constrained else []), *requirements],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return proc, {}
    items = json.loads(report.read_text())["install"]
    return proc, {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def test_colab_meets_every_runtime_dependency_range():
    pins, python, may_add = _colab()
    project = _project()
    assert SpecifierSet(project["requires-python"]).contains(python), (project["requires-python"], python)
    # Colab's version of each direct dependency meets our range (read from pyproject.toml now, not a copy)
    for dep in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dep.name)
        if name in pins:
            assert dep.specifier.contains(pins[name], prereleases=True), f"{dep} rejects Colab's {name} {pins[name]}"
        else:
            assert name in may_add, f"{name} is neither pinned in nor marked not-preinstalled by {CONSTRAINTS.name}"


def test_pip_in_colab_would_change_no_preinstalled_package(tmp_path):
    pins, _, may_add = _colab()
    deps = _project()["dependencies"]
    proc, added = _install_in_colab(tmp_path, deps)
    if proc.returncode != 0:
        _skip_if_registry_unreachable(sorted(may_add)[0], "so Colab's install was not resolved")
        pytest.fail(f"pip cannot install {deps} over Colab's packages without changing one:\n{proc.stderr[-3000:]}")
    changed = {name: (pins[name], version) for name, version in added.items() if name in pins}
    assert not changed, f"pip would replace Colab's (preinstalled, new) versions: {changed}"
    unknown = set(added) - may_add
    assert not unknown, (
        f"pip adds {sorted(unknown)}: look each up in Colab's pip freeze and pin it in "
        f"{CONSTRAINTS.name}, or list it under not-preinstalled"
    )
    # the stand-in hides nothing that Colab lacks: each such direct dependency is added
    for dep in map(Requirement, deps):
        assert canonicalize_name(dep.name) in set(added) | set(pins), dep


def test_the_colab_check_catches_a_dependency_colab_does_not_meet(tmp_path):
    # ipywidgets>=8 (this package's range before Colab was checked) must fail both ways
    proc, _ = _install_in_colab(tmp_path / "c", ["ipywidgets>=8.0"])
    if proc.returncode == 0:
        pytest.fail("the constraints let pip take ipywidgets>=8 over Colab's 7.7.1")
    proc, added = _install_in_colab(tmp_path / "u", ["ipywidgets>=8.0"], constrained=False)
    if proc.returncode != 0:
        _skip_if_registry_unreachable("ipywidgets", "so the check's own failure case was not resolved")
        pytest.fail(proc.stderr[-3000:])
    assert added["ipywidgets"].split(".")[0] != "7"  # pip would upgrade Colab's ipywidgets: what the check refuses


# --- the live widgets under Colab's ipywidgets 7.7.1 -------------------------------------------------------------


def _widget_env_python() -> Path:
    """.venv/ipyw7's python: Colab's widget stack in front of this interpreter's packages (built once per pin set)."""
    pins, _, _ = _colab()
    reqs = [f"{name}=={pins[canonicalize_name(name)]}" for name in WIDGET_STACK]
    base_site = sysconfig.get_path("purelib")
    key = "\n".join([sys.version, base_site, *reqs]) + "\n"
    python, stamp = WIDGET_ENV / "bin" / "python", WIDGET_ENV / "ddpm-tutor-pins.txt"
    if stamp.exists() and stamp.read_text() == key and python.exists():
        return python
    shutil.rmtree(WIDGET_ENV, ignore_errors=True)
    # `venv --system-site-packages` from a venv's python would expose the base interpreter's packages, not .venv's;
    # a .pth that adds .venv's site-packages after the venv's own puts the pinned stack in front of them
    venv.EnvBuilder(with_pip=False).create(WIDGET_ENV)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "_ddpm_tutor_base.pth").write_text(f"import site; site.addsitedir({base_site!r})\n")
    # .venv's pip, run by the new python, installs into the new venv; --ignore-installed leaves .venv untouched
    cmd = [python, *PIP[1:], "install", "--quiet", "--no-deps", "--ignore-installed", "--no-compile", *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        _skip_if_registry_unreachable(reqs[0], "so ipywidgets 7.7.1 could not be installed")
        pytest.fail(f"installing {reqs} into {WIDGET_ENV}:\n{proc.stderr[-3000:]}")
    stamp.write_text(key)
    return python


def _notebooks_with_live_widgets() -> list[Path]:
    return sorted(p for p in (ROOT / "book").rglob("*.ipynb") if "live_plot(" in p.read_text())


def test_live_widgets_update_their_figure_on_colabs_ipywidgets_7(tmp_path):
    notebooks = _notebooks_with_live_widgets()
    names = {p.stem for p in notebooks}
    assert {"06_schedule", "04_guidance"} <= names, names  # the schedule designer and the guidance slider
    python = _widget_env_python()
    out = tmp_path / "widgets.json"
    env = {**os.environ, "DDPM_TUTOR_BUDGET": "ci", "OMP_NUM_THREADS": "1"}
    cmd = [python, __file__, str(out), *map(str, notebooks)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    pins, _, _ = _colab()
    assert report["versions"] == {n: pins[canonicalize_name(n)] for n in ("ipywidgets", "ipython", "traitlets")}
    assert len(report["widgets"]) >= len(notebooks)
    for w in report["widgets"]:
        where = f"{w['notebook']} cell {w['cell']}: {w['control']} {w['old']} -> {w['new']}"
        assert not w["errors"], f"{where}:\n{w['errors']}"
        assert w["figures_before"] == 1 and w["figures_after"] == 1, where  # one figure, replaced, not appended
        assert w["changed"], f"{where}: the figure did not change"


def test_the_widget_check_catches_a_figure_that_ignores_its_slider_or_fails(tmp_path):
    # the same check on three made-up widgets, under this environment's ipywidgets (8): one follows its slider, one
    # draws the same figure whatever the slider says, one raises once the slider moves
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    slider = "a=widgets.FloatSlider(value=0.5))"
    cells = [
        "from ddpm_tutor import viz\nimport ipywidgets as widgets\nHEIGHT = 1.0",
        "boom = 1 / 0",  # not needed by any widget, so never run
        f"def draw(ax, a):\n    ax.plot([0, 1], [0, a * HEIGHT])\n\nviz.live_plot(draw, {slider}",
        f"def same(ax, a):\n    ax.plot([0, 1], [0, HEIGHT])\n\nviz.live_plot(same, {slider}",
        f"def fails(ax, a):\n    assert a < 0.9, 'slider moved'\n    ax.plot([0, 1], [0, a])\n\n"
        f"viz.live_plot(fails, {slider}",
    ]
    nb = tmp_path / "made_up.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), nb)
    out = tmp_path / "widgets.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(out), str(nb)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    follows, same, fails = json.loads(out.read_text())["widgets"]
    assert (follows["errors"], follows["figures_after"], follows["changed"]) == ("", 1, True)
    assert (same["errors"], same["figures_after"], same["changed"]) == ("", 1, False)
    assert "slider moved" in fails["errors"] and fails["figures_after"] == 0 and not fails["changed"]


# --- run by the tests above, in .venv/ipyw7: `python tests/test_colab_env.py OUT.json NOTEBOOK...` ----------------


def _names(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names a statement reads and does not bind itself, names it binds)."""
    loaded, bound = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
    return loaded - bound - set(dir(builtins)), bound


def _needed_statements(earlier: list[str], cell: str) -> str:
    """The top-level statements of the ``earlier`` cells that define what ``cell`` uses, in order (a chapter's
    training and sampling runs only where the widget needs its result; statements that only act, such as seeding,
    are left out: the chapter's own numbers are nbval's to check)."""
    from IPython.core.inputtransformer2 import TransformerManager

    to_python = TransformerManager().transform_cell  # %magics -> Python
    statements = [s for src in earlier for s in ast.parse(to_python(src)).body]
    need, keep = _names(ast.parse(to_python(cell)))[0], []
    for s in reversed(statements):
        free, bound = _names(s)
        if bound & need:
            keep.append(s)
            need = (need - bound) | free
    return ast.unparse(ast.Module(body=keep[::-1], type_ignores=[]))


def _drive(out: Path, notebooks: list[Path]) -> None:
    """Build each live widget in an IPython shell with the inline backend, move its first slider, record figures."""
    import IPython
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    import traitlets
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    class Shell(InteractiveShell):
        def enable_gui(self, gui=None):  # the inline backend needs no GUI event loop
            pass

    shell = Shell.instance()
    shell.enable_matplotlib("inline")
    versions = {"ipywidgets": widgets.__version__, "ipython": IPython.__version__, "traitlets": traitlets.__version__}
    report = {"versions": versions, "widgets": []}
    for path in notebooks:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        sources = ["".join(c["source"]) for c in cells]
        for k, src in enumerate(sources):
            if "live_plot(" not in src:
                continue
            shell.reset()
            rec = {
                "notebook": os.path.relpath(path, ROOT),
                "cell": k,
                "control": None,
                "old": None,
                "new": None,
                "figures_before": 0,
                "figures_after": 0,
                "changed": False,
                "errors": "",
            }
            report["widgets"].append(rec)
            with capture_output() as setup:
                ok = shell.run_cell(_needed_statements(sources[:k], src), store_history=True).success
            plt.close("all")  # figures the earlier statements left open (shown by the inline backend after them)
            with capture_output() as before:
                result = shell.run_cell(src, store_history=True) if ok else None
            pngs = [o.data["image/png"] for o in before.outputs if "image/png" in o.data]
            rec["figures_before"] = len(pngs)
            ui = result.result if result is not None and result.success else None
            if not isinstance(ui, widgets.interactive):
                rec["errors"] = (
                    f"the cell did not end with a live_plot widget:\n{(setup.stdout + before.stdout)[-3000:]}"
                )
                continue
            sliders = [w for w in ui.kwargs_widgets if isinstance(w, (widgets.IntSlider, widgets.FloatSlider))]
            if not sliders:
                rec["errors"] = "the widget has no IntSlider or FloatSlider to move"
                continue
            control = sliders[0]
            rec["control"], rec["old"] = control.description, control.value
            with capture_output() as after:
                control.value = control.max if control.value != control.max else control.min
            rec["new"] = control.value
            new_pngs = [o.data["image/png"] for o in after.outputs if "image/png" in o.data]
            rec["figures_after"] = len(new_pngs)
            rec["changed"] = bool(pngs and new_pngs and pngs[-1] != new_pngs[-1])
            # interactive() catches an exception of the drawing function and prints its traceback
            printed = before.stdout + before.stderr + after.stdout + after.stderr
            if "Traceback" in printed:
                rec["errors"] = printed[-3000:]
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    _drive(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
