"""Self-check functions for the book's exercises: each tells the learner whether their function is
right and, if not, where it first goes wrong. One module per chapter (e.g. ``exercises.part1``)."""

from ._check import CheckFailed, check_close  # noqa: F401
