"""Multi-node scenarios for tests/platform: a ``ray.cluster_utils.Cluster`` of producer and consumer nodes.

    python tests/platform/scenarios.py producers_and_consumers <work_dir> <latent_store>

A scenario runs in a process of its own (a ``Cluster`` cannot share a process with the session's local Ray),
places the producer pools and the train workers with the custom resources that ``platform/`` gives its node groups,
and prints one JSON object as its last line: the facts the tests assert on. Nodes oversubscribe logical CPUs (the
machine has 2 cores); the actors mostly wait on each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors, list_tasks  # noqa: E402

from models.ray_runtime import use_local_train_settings  # noqa: E402
from pipelines.curation import LABELS_FILE, CurationConfig, run_curation  # noqa: E402
from pipelines.pools import PoolConfig  # noqa: E402

PRODUCER, CONSUMER = "producer", "consumer"  # the resource names of platform/'s node groups
TRAIN_WORKER = "RayTrainWorker"
# Fast enough for 2 cores: the default curation (no captioner or CLIP model without weights), one row per scored file.
FAST_CURATION = {"min_rows_per_file": 1}
ENCODE = {"resolutions": [256], "min_stage": 1, "rows_per_shard": 4, "vae_pool": {"batch_size": 2}}


@contextlib.contextmanager
def start_cluster(num_producers: int, num_consumers: int) -> Iterator[tuple[Cluster, dict[str, list]]]:
    """Head (the driver's node, no pool resource) plus producer and consumer nodes, shut down on exit."""
    use_local_train_settings()  # one machine: Ray Train's controller polls every 0.25 s, no preemption watcher
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,  # the state API (list_actors) is served by the dashboard
            "dashboard_port": _free_port(),
            # A lost node is declared dead after ~3 s instead of ~30 s.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    # Anything that connects on its own (state API, Ray Data, Train) finds this cluster, never another engineer's.
    os.environ["RAY_ADDRESS"] = cluster.address
    nodes: dict[str, list] = {PRODUCER: [], CONSUMER: []}
    try:
        for kind, count, cpus in ((PRODUCER, num_producers, 6), (CONSUMER, num_consumers, 2)):
            for _ in range(count):
                nodes[kind].append(cluster.add_node(num_cpus=cpus, resources={kind: 1000}))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield cluster, nodes
    finally:
        ray.shutdown()
        # Not cluster.shutdown(): a job thread still running may have reconnected the driver, which it refuses.
        for node in [*cluster.worker_nodes, cluster.head_node]:
            node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_ids(nodes: dict[str, list]) -> dict[str, list[str]]:
    return {kind: [node.node_id for node in group] for kind, group in nodes.items()}


def placed_curation(work: pathlib.Path, num_samples: int) -> CurationConfig:
    """The producer job's config with every pool placed on producer nodes, as platform/preprocess.yaml does."""
    from pipelines.synth.sample_corpus import write_sample_corpus

    shards = write_sample_corpus(work / "corpus", num_samples, seed=5)
    config = CurationConfig.model_validate(
        {
            "sources": [{"kind": "webdataset", "paths": shards}],
            "output_dir": str(work / "curated"),
            "encode": {**ENCODE, "store_dir": str(work / "store")},
            **FAST_CURATION,
        }
    )
    return place_pools(config, {PRODUCER: 0.01})


def place_pools(model, resources: dict[str, float]):
    """A copy of ``model`` with ``resources`` set on every ``PoolConfig`` inside it, however deep."""
    update = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, PoolConfig):
            update[name] = value.model_copy(update={"resources": resources})
        elif hasattr(type(value), "model_fields"):
            update[name] = place_pools(value, resources)
    return model.model_copy(update=update)


def placed_pretraining(work: pathlib.Path, store: pathlib.Path, num_steps: int, checkpoint_every: int):
    """A tiny pretraining run on ``store`` (the test session's latent store), its workers placed on consumer nodes."""
    from training.config import PretrainConfig

    return PretrainConfig.model_validate(
        {
            "store_dir": str(store),
            "output_dir": str(work / "pretrain"),
            "run_name": "t",
            "batch_size": 4,
            "num_workers": 1,
            "worker_resources": {CONSUMER: 0.01},
            "max_failures": 2,
            "checkpoint_every": checkpoint_every,
            "log_every": 1,
            "shuffle_buffer": 8,
            "optim": {"lr": 5e-4, "warmup_steps": 2},
            "samples": {"num_steps": 1, "prompts": ["a red apple"]},
            "phases": [{"name": "p", "num_steps": num_steps, "resolution": 256}],
        }
    )


class InThread:
    """Runs ``function`` in a thread; keeps its result, or its error as text."""

    def __init__(self, function, *args):
        self.result = self.error = None
        self._thread = threading.Thread(target=self._run, args=(function, *args), daemon=True)
        self._thread.start()

    def _run(self, function, *args) -> None:
        try:
            self.result = function(*args)
        except BaseException as error:  # noqa: BLE001 - reported to the test as text
            self.error = f"{type(error).__name__}: {error}"

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def actors() -> list[dict]:
    """Every actor the cluster has run (dead ones included), with its class, node and state."""
    rows = list_actors(limit=10_000, raise_on_missing_output=False)
    return [{"class": a.class_name, "node": a.node_id, "state": a.state, "name": a.name} for a in rows]


def is_producer_actor(row: dict) -> bool:
    return row["class"].startswith("MapWorker(")


def stored_ids(store: pathlib.Path) -> list[str]:
    from store.reader import read_table

    return read_table(store, 256).column("sample_id").to_pylist()


def kept_ids(curated: pathlib.Path) -> list[str]:
    import pyarrow.parquet as pq

    labels = pq.read_table(curated / LABELS_FILE).to_pydict()
    return [sample for sample, stage in zip(labels["sample_id"], labels["stage"], strict=True) if stage >= 1]


def producers_and_consumers(cluster: Cluster, nodes: dict[str, list], work: pathlib.Path, store: pathlib.Path) -> dict:
    """The producer job and a pretraining job at once, each on its own node group, and one node of each group lost.

    Training starts once the producer job's actors are up. The consumer node running the train worker is removed
    once a checkpoint is registered (the controller's snapshot exists); the producer node running the VAE encoder is
    removed while it encodes. Both jobs must finish, placed as ``platform/`` places them, losing and repeating
    nothing."""
    from training.metrics import read_metrics
    from training.pretrain import run_pretraining

    curation = placed_curation(work, num_samples=8)
    pretraining = placed_pretraining(work, store, num_steps=24, checkpoint_every=4)
    run_dir = work / "pretrain" / "t"
    producer, consumer = InThread(run_curation, curation), None
    overlap = False
    removed: dict[str, str | None] = {PRODUCER: None, CONSUMER: None}
    checkpoints_at_loss: list[str] = []
    lock = threading.Lock()  # the two removals may come at once, from this loop and from the consumer's watcher

    def remove_consumer_after_checkpoint() -> None:
        # The controller writes its snapshot once a reported checkpoint is registered: a restart resumes from it.
        # A tight loop on the file, then one state-API query for the worker's node: a tiny run is short.
        while not list(run_dir.glob("ray/*/checkpoint_manager_snapshot.json")):
            if consumer is not None and not consumer.alive():
                return
            time.sleep(0.02)
        checkpoints_at_loss.extend(sorted(p.name for p in run_dir.glob("ray/*/checkpoint_*") if p.is_dir()))
        filters = [("class_name", "=", TRAIN_WORKER), ("state", "=", "ALIVE")]
        workers = list_actors(filters=filters, raise_on_missing_output=False)
        if workers:
            with lock:
                removed[CONSUMER] = _remove(cluster, nodes[CONSUMER], workers[0].node_id)

    deadline = time.time() + 600
    while (producer.alive() or consumer is None or consumer.alive()) and time.time() < deadline:
        rows = [row for row in actors() if row["state"] == "ALIVE"]
        producing = any(is_producer_actor(row) for row in rows)
        if consumer is None and producing:  # the producer job is under way: start training beside it
            consumer = InThread(run_pretraining, pretraining)
            watcher = threading.Thread(target=remove_consumer_after_checkpoint, daemon=True)
            watcher.start()
        workers = [row for row in rows if row["class"] == TRAIN_WORKER]
        overlap = overlap or (producing and bool(workers))
        encoders = [row for row in rows if row["class"] == "MapWorker(MapBatches(VaeEncodeStage))"]
        if removed[PRODUCER] is None and encoders:
            with lock:
                removed[PRODUCER] = _remove(cluster, nodes[PRODUCER], encoders[0]["node"])
        time.sleep(0.3)  # each round asks the state API for every actor: not more often than needed
    producer.join(60)
    if consumer:
        consumer.join(60)
        watcher.join(60)
    metrics = run_dir / "metrics.csv"
    return {
        "nodes": node_ids(nodes),
        "actors": actors(),
        "prompt_tasks": [
            task.node_id
            for task in list_tasks(filters=[("name", "=", "encode_sample_prompts")], raise_on_missing_output=False)
        ],
        "overlap": overlap,
        "removed": removed,
        "finished": not producer.alive() and consumer is not None and not consumer.alive(),
        "producer_error": producer.error,
        "consumer_error": consumer.error if consumer else "never started",
        "stored": stored_ids(work / "store") if producer.error is None else [],
        "expected": kept_ids(work / "curated") if producer.error is None else [],
        "checkpoints_at_loss": checkpoints_at_loss,
        "checkpoint_every": pretraining.checkpoint_every,
        "num_steps": pretraining.total_steps,
        "summary": consumer.result if consumer else None,
        # (step, the step its attempt started from: 0, or the checkpoint a restarted attempt restored) per row.
        "steps": [(int(row["step"]), int(row["restored_step"])) for row in read_metrics(metrics)]
        if metrics.exists()
        else [],
    }


def _remove(cluster: Cluster, group: list, node_id: str) -> str:
    """Removes the node ``node_id`` of ``group`` at once (no graceful drain, as a lost machine); returns its id."""
    node = next(node for node in group if node.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)
    return node_id


# name: (scenario, producer nodes, consumer nodes)
SCENARIOS = {"producers_and_consumers": (producers_and_consumers, 2, 2)}

if __name__ == "__main__":
    scenario, num_producers, num_consumers = SCENARIOS[sys.argv[1]]
    with start_cluster(num_producers, num_consumers) as (cluster, nodes):
        facts = scenario(cluster, nodes, *map(pathlib.Path, sys.argv[2:]))
    print(json.dumps(facts, default=str), flush=True)
