"""The highest stage each sample passes, and its first drop reason, from stored score columns.

Pure functions of score columns, thresholds and a list of checks, so the same thresholds (or
new ones) can be re-applied to stored scores without decoding anything. ``stage`` is the largest
``s`` in 0..7 such that every check of stages 1..s passes: 0 fails S1. A stage with no check in
the list passes trivially, so with only the S1, S2 and S5 checks a sample that passes all of them
gets 7; stages 3, 4, 6 and 7 tighten this as their checks are appended to the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.operators.base import NUM_STAGES, Check


def check_masks(columns: Mapping[str, np.ndarray], thresholds: Any, checks: Sequence[Check]) -> dict[str, np.ndarray]:
    """Pass mask of every check, by check name (the funnel counts drops from these)."""
    masks = {}
    for check in checks:
        if check.column not in columns:
            raise ValueError(
                f"check {check.name!r} reads column {check.column!r}, which the batch lacks; compute it first "
                "(score_duplicate comes from dedup.add_duplicate_column over the whole dataset) "
                "or leave the check out of the list"
            )
        masks[check.name] = check.passes(columns[check.column], thresholds)
    return masks


def compute_stage(columns: Mapping[str, np.ndarray], thresholds: Any, checks: Sequence[Check]) -> np.ndarray:
    """int8 column: the highest stage passed (0..7)."""
    masks = check_masks(columns, thresholds, checks)
    num_rows = _num_rows(columns, checks)
    passed = np.ones(num_rows, dtype=bool)
    stage = np.zeros(num_rows, dtype=np.int8)
    for stage_number in range(1, NUM_STAGES + 1):
        for check in checks:
            if check.stage == stage_number:
                passed &= masks[check.name]
        stage[passed] = stage_number
    return stage


def first_drop_reason(columns: Mapping[str, np.ndarray], thresholds: Any, checks: Sequence[Check]) -> np.ndarray:
    """Object column: the reason of the first failing check in stage order, "" when all pass."""
    masks = check_masks(columns, thresholds, checks)
    reasons = np.full(_num_rows(columns, checks), "", dtype=object)
    for check in sorted(checks, key=lambda item: item.stage):
        failing = np.flatnonzero(~masks[check.name] & (reasons == ""))
        scores = np.asarray(columns[check.column], dtype=np.float64)
        for row in failing:
            reason = check.reason(float(scores[row]), thresholds)
            if check.detail_column is not None and check.detail_column in columns and columns[check.detail_column][row]:
                reason = str(columns[check.detail_column][row])
            reasons[row] = reason
    return reasons


def _num_rows(columns: Mapping[str, np.ndarray], checks: Sequence[Check]) -> int:
    lengths = {len(columns[check.column]) for check in checks}
    if len(lengths) > 1:
        raise ValueError(f"score columns have different lengths: {sorted(lengths)}")
    if lengths:
        return lengths.pop()
    return len(next(iter(columns.values()))) if columns else 0
