"""Self-check functions for the book's exercises: each tells the learner whether their function is
right and, if not, where it first goes wrong. One module per group of chapters (e.g. ``exercises.part1_late``).

Each ``check_*`` function takes the learner's function, runs it on a few cases and compares the result
with the library's reference. It prints a success line (and returns it), prints a "not attempted yet"
line when the function still raises ``NotImplementedError`` (and returns ``None``), and raises
:class:`~ddpm_tutor.exercises.CheckFailed` naming the first case that goes wrong otherwise, with a hint
when the answer matches a known mistake.
"""

from ._check import CheckFailed, check_close  # noqa: F401
