"""Row selection over stored columns: one condition type, ``(column, operator, value)``, that a YAML config can hold,
compiled three ways: a pyarrow dataset expression (``arrow_filter``, with Parquet statistics skipping row groups), a
Ray Data expression (``ray_filter``, pushed down into Ray's Parquet scan) and a row mask over a table in memory
(``arrow_mask``). Operators: ``== != < <= > >=``, ``in`` (a list of values) and ``not_null``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from store import columns as C

Predicate = tuple[str, str, object]  # (column, operator, value), e.g. ("score_blur", ">=", 100.0)
COMPARISONS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def selection(resolution: int, min_stage: int | None, predicates: Iterable[Predicate]) -> list[Predicate]:
    """The conditions (ANDed) that select a phase's rows: its predicates (each operator checked) and its minimum
    stage. Compiled to Arrow (``arrow_filter``), Ray Data (``ray_filter``) and row masks by the readers."""
    conditions = list(predicates)
    for column, operator, _ in conditions:
        if operator not in COMPARISONS and operator != "in":
            raise ValueError(f"predicate on {column!r}: operator {operator!r} is not one of {[*COMPARISONS, 'in']}")
    if min_stage is not None:
        conditions.append((C.STAGE, ">=", min_stage))
    # Rows without latents at this resolution (source too small) are dropped by the batcher, not in the scan: a
    # not-null condition makes Arrow copy every column of every row even where no value is null.
    return conditions


def compile_conditions(
    conditions: list[Predicate],
    *,
    operand: Callable[[str], object],
    not_null: Callable[[object], object],
    is_in: Callable[[object, list], object],
    compare: dict[str, Callable[[object, object], object]],
    both: Callable[[object, object], object],
):
    """The conditions ANDed in one target language: ``operand(column)`` names a column there, the other arguments
    build its terms. None when there is no condition."""
    expression = None
    for column, operator, value in conditions:
        field = operand(column)
        if operator == "not_null":
            term = not_null(field)
        elif operator == "in":
            term = is_in(field, list(value))
        else:
            term = compare[operator](field, value)
        expression = term if expression is None else both(expression, term)
    return expression


def arrow_filter(conditions: list[Predicate]) -> pads.Expression:
    """The conditions (ANDed) as a pyarrow dataset expression."""
    return compile_conditions(
        conditions,
        operand=pads.field,
        not_null=lambda field: field.is_valid(),
        is_in=lambda field, values: field.isin(values),
        compare=COMPARISONS,
        both=lambda a, b: a & b,
    )


def ray_filter(conditions: list[Predicate]):
    """The same conditions as a Ray Data expression (pushed down into the Parquet scan by Ray's optimizer)."""
    from ray.data.expressions import col

    return compile_conditions(
        conditions,
        operand=col,
        not_null=lambda field: field.is_not_null(),
        is_in=lambda field, values: field.is_in(values),
        compare=COMPARISONS,
        both=lambda a, b: a & b,
    )


ARROW_KERNELS = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def arrow_mask(table: pa.Table, conditions: list[Predicate]) -> np.ndarray | None:
    """The rows of ``table`` that pass every condition, as a boolean array; None when all pass (nothing to copy)."""
    mask = compile_conditions(
        conditions,
        operand=table.column,
        not_null=pc.is_valid,
        is_in=lambda values, value_set: pc.is_in(values, value_set=pa.array(value_set)),
        compare=ARROW_KERNELS,
        both=pc.and_,
    )
    if mask is None:
        return None
    keep = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    return None if keep.all() else keep
