"""Depth-bound reasoning task suites: generators of train / val / test JSONL rows in the ``answers`` data
format (prompt / answer, or infill text with target spans), each with an independent checker and a trivial
heuristic baseline.

Families (``TASKS``): ``vars`` (variable resolution; the level is a dependency depth; modes ``query`` and
``trace``, kinds ``hops`` and ``arith``) and ``prefix`` (prefix sums mod 10 or prefix parity; the level is the
input size). ``make_splits`` draws disjoint splits, ``write_task`` writes a task folder
(``loopmdm task make`` on the command line). Pure Python + numpy.
"""

from __future__ import annotations

from .base import (
    TASKS,
    TaskFamily,
    family_for_task,
    heuristic_for,
    make_splits,
    row_key,
    target_text,
)
from .prefix import PREFIX, PrefixTask
from .vars import VARS, VarsTask
from .writer import write_task

__all__ = [
    "TASKS",
    "TaskFamily",
    "VarsTask",
    "PrefixTask",
    "VARS",
    "PREFIX",
    "make_splits",
    "write_task",
    "row_key",
    "target_text",
    "heuristic_for",
    "family_for_task",
]
