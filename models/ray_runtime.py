"""Connecting a job to Ray: the cluster at ``RAY_ADDRESS`` when set, otherwise a local Ray on this machine.

A local Ray oversubscribes logical CPUs (8 per core, at least 16): a producer job keeps one actor alive per stage
(decode, CLIP, captioner, OCR, faces, synthesis, encoders: about ten pools), each holding a logical CPU, and a pool
whose first actor cannot be placed stalls the whole stream; a train worker holding every CPU would likewise starve
Ray Data (docs/costs.md §3). The actors mostly wait on each other, so the oversubscription costs little.
"""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None) -> dict:
    """Connect (or start a local Ray) once per process; returns the cluster's resources."""
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
            logger.info("connected to the Ray cluster at %s", address)
        else:
            cpus = num_cpus or max(16, 8 * (os.cpu_count() or 1))
            # address="local": start our own, never attach to a Ray another process left running on this machine.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False)
            logger.info("started a local Ray with %d logical CPUs", cpus)
    return ray.cluster_resources()
