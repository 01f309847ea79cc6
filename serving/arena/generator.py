"""The ``ArenaModels`` deployment: every model registered in the arena, loaded once per replica.

``generate(name, job)`` returns one PNG from model ``name`` for a ``serving.schema.GenerationJob`` (the round's
prompt, size, steps, CFG and its one seed): the same call with the same seed gives the same image, so a stored
round can be drawn again. One image at a time per replica (a lock): the models share the replica's cores, and a
fast tokenizer may not be called from two threads at once. More throughput is more replicas (``autoscaling_config``
in the config file), each holding all models; on GPUs give it ``ray_actor_options.num_gpus``.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ray import serve

from serving.arena.config import ArenaSettings
from serving.generator import generate_jobs, load_model
from serving.schema import GenerationJob

logger = logging.getLogger(__name__)


@serve.deployment(name="ArenaModels", max_ongoing_requests=16, ray_actor_options={"num_cpus": 1})
class ArenaModels:
    """All arena models in one replica; an unknown name is a ``KeyError`` (the ingress only asks for known ones)."""

    def __init__(self, settings: ArenaSettings):
        self.models = {model.name: load_model(model) for model in settings.models}
        self.lock = threading.Lock()
        logger.info("arena models ready: %s", ", ".join(self.models))

    def _generate(self, name: str, job: GenerationJob) -> bytes:
        with self.lock:
            return generate_jobs(self.models[name], [job])[0][0]

    async def generate(self, name: str, job: GenerationJob) -> bytes:
        # A sampler call takes seconds: a worker thread keeps the replica's event loop free for health checks.
        return await asyncio.to_thread(self._generate, name, job)
