"""Assignments from the book's exercises, graded with nbgrader: one source, the chapter notebooks.

:mod:`.chapters` reads the exercises from the chapters, :mod:`.catalog` holds what only an instructor adds
(learning goal, points), :mod:`.build` writes the nbgrader course, :mod:`.grade` releases and grades it, and
:mod:`.guide` makes the instructor's guide's table. Command line: ``python -m ddpm_tutor.assignments``.
"""

from .build import build_course, chapter_notebook
from .catalog import EXERCISES, Meta
from .chapters import Chapter, Exercise, ExerciseError, read_book, read_chapter
from .grade import Result, check_submission, check_submissions, grade, release

__all__ = [
    "EXERCISES",
    "Chapter",
    "Exercise",
    "ExerciseError",
    "Meta",
    "Result",
    "build_course",
    "chapter_notebook",
    "check_submission",
    "check_submissions",
    "grade",
    "read_book",
    "read_chapter",
    "release",
]
