"""Stage contracts: the columns each producer stage reads and writes, checked in order when a chain is built.

Every stage of a chain (``Stage``) names the columns it needs in its input batches (``reads``), the columns it
adds (``writes``) and what each of its workers asks Ray for (``resources``: CPUs, GPUs, custom node resources, and
how many actors when it runs on an actor pool); a column a stage only uses when it is there (the annotation's watermark list, read by the OCR
stage) is not among its reads. ``check_chain`` walks a chain from the columns its source delivers and refuses it
before any data moves, naming the first stage that reads a column no stage before it writes, and the stage that
writes it when one does, later. ``apply_chain`` then builds the (lazy) Ray Dataset stage by stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import ray.data


class StageContractError(ValueError):
    """A chain whose stages are out of order, or that lacks the stage a column comes from."""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # as Ray Data names the operator: the class or function name
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    apply: Callable[[ray.data.Dataset], ray.data.Dataset] = dataclasses.field(repr=False, compare=False)
    # Per worker: {"CPU": 1.0, "GPU": 0.25, "<custom>": ...}; ``actors`` (min, max) for an actor pool, None for tasks.
    resources: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"CPU": 1.0})
    actors: tuple[int, int] | None = None

    def describe(self) -> str:
        asks = ", ".join(f"{amount:g} {name}" for name, amount in self.resources.items() if amount)
        workers = f"{self.actors[0]}-{self.actors[1]} actors" if self.actors else "tasks"
        return f"{self.name} ({asks}; {workers})"


def check_chain(stages: Sequence[Stage], delivered: Iterable[str]) -> None:
    """Raise ``StageContractError`` unless every stage's reads are delivered by the source or written before it."""
    available = set(delivered)
    for index, stage in enumerate(stages):
        missing = [column for column in stage.reads if column not in available]
        if missing:
            column = missing[0]
            later = [other.name for other in stages[index + 1 :] if column in other.writes]
            where = f"{later[0]} writes it, after {stage.name}" if later else "no stage of the chain writes it"
            raise StageContractError(
                f"stage {stage.name} (#{index + 1} of {len(stages)}) reads column {column!r}, which neither the source "
                f"nor a stage before it writes: {where}; chain: {' -> '.join(s.name for s in stages)}"
            )
        available.update(stage.writes)


def apply_chain(dataset: ray.data.Dataset, stages: Sequence[Stage]) -> ray.data.Dataset:
    for stage in stages:
        dataset = stage.apply(dataset)
    return dataset


def describe_chain(stages: Sequence[Stage]) -> str:
    """The chain in order with what each stage's workers ask for, for the job's log."""
    return " -> ".join(stage.describe() for stage in stages)


def chain_writes(stages: Sequence[Stage]) -> set[str]:
    """Every column the chain's stages declare they write."""
    return {column for stage in stages for column in stage.writes}
