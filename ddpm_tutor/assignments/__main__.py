"""``python -m ddpm_tutor.assignments build|release|grade``: the instructor's commands (see ``--help``).

build   writes an nbgrader course folder from the chapters (``make assignments``)
release runs nbgrader generate_assignment: the student notebooks, without solutions, in <course>/release
grade   checks and autogrades <course>/submitted/<student>/<assignment>, and writes the feedback
student writes the student edition's notebooks (no solutions) and its config, and checks a built edition
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli import UsageError, _int_at_least, _Parser
from .build import BY, DEFAULT_TIMEOUT, build_course
from .grade import grade, release
from .student import book_fingerprints, check_site, replace_sources, write_config, write_notebooks


def build_parser() -> _Parser:
    """The command line: three subcommands, argparse's usage errors (exit status 2)."""
    parser = _Parser(prog="python -m ddpm_tutor.assignments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("build", help="write an nbgrader course folder from the chapters")
    p.add_argument("--out", type=Path, default=Path("_build/course"), help="the course folder (default %(default)s)")
    p.add_argument("--by", choices=BY, default="chapter", help="one assignment per chapter or per part")
    p.add_argument("--chapters", nargs="+", metavar="CHAPTER", help="only these (e.g. part1/02_objective)")
    p.add_argument("--timeout", type=_int_at_least(1), default=DEFAULT_TIMEOUT, help="seconds per cell when grading")
    p = sub.add_parser("release", help="nbgrader generate_assignment: the student notebooks in <course>/release")
    p.add_argument("--course", type=Path, default=Path("_build/course"))
    p.add_argument("--assignment", nargs="+", help="only these (default: every assignment in <course>/source)")
    p = sub.add_parser("grade", help="check, autograde and write feedback for <course>/submitted/*/<assignment>")
    p.add_argument("--course", type=Path, default=Path("_build/course"))
    p.add_argument("--assignment", required=True)
    p.add_argument("--student", nargs="+", help="only these students (default: every one who submitted)")
    p.add_argument("--timeout", type=_int_at_least(1), help="seconds per cell (default: the course's)")
    p = sub.add_parser("student", help="the student edition: its config, its notebooks, the check of a build")
    p.add_argument("--out", type=Path, default=Path("_build_student"), help="its folder (default %(default)s)")
    p.add_argument("--branch", default="student", help="the branch its Colab links open (default %(default)s)")
    p.add_argument("--cache", type=Path, help="write the edition's config and toc, reusing this execution cache")
    p.add_argument("--html", type=Path, help="a built edition: serve the student notebooks, then check every file")
    return parser


def student(args) -> int:
    """``student``: with --cache, the config and toc of the build; with --html, the notebooks in place of the
    built edition's sources and a check of every page and file for a solution (status 1 if one is found)."""
    if args.cache:
        config, toc = write_config(args.out, args.cache, args.branch)
        print(f"{config}, {toc}: the student edition's config and toc (Colab links on branch {args.branch!r})")
    if not args.html:
        return 0
    if not (args.html / "index.html").is_file():
        raise UsageError(f"argument --html: no index.html in {args.html}; build the student edition first")
    notebooks = write_notebooks(args.out / "notebooks")
    prints = book_fingerprints()
    (args.out / "solution_fingerprints.json").write_text(json.dumps(prints, indent=1, ensure_ascii=False))
    replaced = replace_sources(args.html, args.out / "notebooks")
    leaks = check_site(args.html, prints)
    for path, found in leaks.items():
        print(f"{path}: holds a solution:", *found[:3], sep="\n  ", file=sys.stderr)
    n = sum(map(len, prints.values()))
    print(
        f"{args.out / 'notebooks'}: {len(notebooks)} student notebooks (the branch {args.branch!r}); "
        f"{len(replaced)} served notebooks replaced; {n} solution lines looked for in {args.html}: "
        f"{len(leaks)} files hold one"
    )
    return 1 if leaks else 0


def run(args) -> int:
    """Carry out one parsed command line; returns the exit status (1 when a submission could not be graded)."""
    if args.command == "student":
        return student(args)
    if args.command == "build":
        written = build_course(args.out, args.by, args.chapters, timeout=args.timeout)
        n = sum(map(len, written.values()))
        print(f"{args.out}: {len(written)} assignments, {n} notebooks in source/; next: release --course {args.out}")
        return 0
    if not (args.course / "nbgrader_config.py").is_file():
        raise UsageError(f"argument --course: no nbgrader_config.py in {args.course}; run `build --out {args.course}`")
    if args.command == "release":
        notebooks = release(args.course, args.assignment)
        print(f"{args.course / 'release'}: {len(notebooks)} student notebooks")
        return 0
    status = 0
    for res in grade(args.course, args.assignment, args.student, args.timeout):
        if res.problems:
            status = 1
            print(f"{res.student}: not graded", *res.problems, sep="\n  ", file=sys.stderr)
            continue
        manual = f", {res.manual_max:g} of them for written answers to grade by hand" if res.manual_max else ""
        print(
            f"{res.student}: {res.score:g} / {res.max_score:g} points{manual}; feedback: "
            + ", ".join(map(str, res.feedback))
        )
    return status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (UsageError, ValueError) as err:  # a bad course, assignment or student: one line, status 2
        parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
