"""Actor pools for producer stages: one config shape per pool, one helper that maps a stage onto ``map_batches``.

Operators size each pool in the job config (``pool.min_size`` / ``max_size``, CPUs and GPU fraction per actor,
batch size) and place it with ``resources`` / ``label_selector`` (the node resources and labels that
``platform/`` defines for CPU producer nodes and GPU nodes). Ray Data autoscales each pool between its bounds.
"""

from __future__ import annotations

from typing import Any

import pydantic
import ray.data

from models.config import StrictModel


class PoolConfig(StrictModel):
    min_size: int = pydantic.Field(default=1, ge=1)
    max_size: int = pydantic.Field(default=1, ge=1)
    num_cpus: float = pydantic.Field(default=1.0, gt=0)
    num_gpus: float = pydantic.Field(default=0.0, ge=0)
    batch_size: int = pydantic.Field(default=16, ge=1)
    resources: dict[str, float] = {}  # custom node resources, e.g. {"producer": 0.01} (platform/README.md)
    label_selector: dict[str, str] = {}  # node labels, e.g. {"pool": "producer-cpu"} (ray start --labels)

    def worker_resources(self) -> dict[str, float]:
        """What each actor of the pool asks Ray for."""
        return {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}

    @pydantic.model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is below min_size ({self.min_size})")
        return self


def map_stage(dataset: ray.data.Dataset, stage: type, pool: PoolConfig, **constructor_kwargs: Any) -> ray.data.Dataset:
    """``dataset.map_batches(stage)`` on an autoscaling actor pool sized by ``pool``.

    ``stage`` is a callable class (model loaded in ``__init__``, ``__call__(batch) -> batch``); Ray Data names the
    operator after it (``MapBatches(ClipScores)``) in progress bars and the dashboard.
    """
    options: dict[str, Any] = {}
    if pool.num_gpus > 0:
        options["num_gpus"] = pool.num_gpus
    if pool.resources:
        options["resources"] = dict(pool.resources)
    if pool.label_selector:
        options["label_selector"] = dict(pool.label_selector)
    return dataset.map_batches(
        stage,
        fn_constructor_kwargs=constructor_kwargs,
        batch_size=pool.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.num_cpus,
        **options,
    )
