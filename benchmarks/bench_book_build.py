"""Wall time of the whole book built from clean, with each chapter's execution time.

Runs what `make book` runs (`jupyter-book build . -W -n --keep-going` under a budget), but into a fresh
output folder with its own empty execution cache, so nothing is reused and the reader's _build is left alone:

    python benchmarks/bench_book_build.py [--budget book] [--out runs/bench_book_build]

Needs the set-up `make book` does first (the venv and `make mathjax`). Prints a table (never pass/fail):
the time depends on the machine and on what else runs on it, so the load average is printed too.
The book's target is under 15 minutes for budget `book` on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = re.compile(r"(?P<path>\S+\.ipynb): Executed notebook in (?P<seconds>[\d.]+) seconds")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget",
        default="book",
        choices=["ci", "book", "full"],
        help="DDPM_TUTOR_BUDGET for the chapters (default: book, what readers build)",
    )
    parser.add_argument(
        "--out",
        default="runs/bench_book_build",
        help="output folder, emptied first: a new one or an earlier --out (default: runs/bench_book_build)",
    )
    args = parser.parse_args()

    jb = Path(sys.executable).with_name("jupyter-book")
    if not jb.exists():
        sys.exit(f"no {jb}: run `make venv` (or `make book` once) first")
    if not (ROOT / "_assets/mathjax/tex-chtml-full.js").exists():
        sys.exit("no _assets/mathjax: run `make mathjax` first (the book serves its own MathJax)")
    out = (ROOT / args.out).resolve()
    # the folder is emptied first: only one that is new, empty or made by this benchmark (it has build.log)
    if ROOT.is_relative_to(out) or (out.is_dir() and any(out.iterdir()) and not (out / "build.log").exists()):
        sys.exit(
            f"--out {out} is the project, contains it, or holds files this benchmark did not write; "
            "expected a new folder or an earlier --out of this benchmark"
        )
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log_path = out / "build.log"
    cmd = [str(jb), "build", ".", "--path-output", str(out), "-W", "-n", "--keep-going"]

    print(f"command: DDPM_TUTOR_BUDGET={args.budget} {shlex.join(cmd)}  (cwd {ROOT})")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    env = dict(os.environ, DDPM_TUTOR_BUDGET=args.budget)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = log_path.read_text(errors="replace")

    chapters = [(Path(m["path"]).relative_to(ROOT), float(m["seconds"])) for m in EXECUTED.finditer(text)]
    width = max([len(str(p)) for p, _ in chapters] + [20])
    print(f"\n{'chapter':<{width}}  execution (s)")
    for path, seconds in chapters:
        print(f"{str(path):<{width}}  {seconds:13.1f}")
    executed = sum(s for _, s in chapters)
    print(f"{'all ' + str(len(chapters)) + ' chapters':<{width}}  {executed:13.1f}")
    print(
        f"\nbuild {'succeeded' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}: "
        f"wall {int(wall // 60)} min {int(wall % 60):02d} s ({wall:.0f} s; of it {wall - executed:.0f} s not in "
        f"chapter execution); log in {log_path.relative_to(ROOT)}"
    )
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
