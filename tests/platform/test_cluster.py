"""Producers and consumers on a multi-node cluster: placement by node resources, and surviving lost nodes.

Each test runs a scenario of ``tests/platform/scenarios.py`` in a process of its own (a ``ray.cluster_utils.Cluster``
cannot share a process with the session's local Ray) and asserts on the facts it prints.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from ..conftest import kept_ray_address_file

SCENARIOS = pathlib.Path(__file__).with_name("scenarios.py")
ROOT = SCENARIOS.parents[2]

pytestmark = pytest.mark.slow


def run_scenario(name: str, *args: str | pathlib.Path) -> dict:
    with kept_ray_address_file():  # the scenario's Cluster names itself the latest cluster, then dies
        return _run_scenario(name, *args)


def _run_scenario(name: str, *args: str | pathlib.Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    process = subprocess.Popen(
        [sys.executable, str(SCENARIOS), name, *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a timeout, its whole cluster (raylets, workers) is ended with it
    )
    try:
        stdout, stderr = process.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"scenario {name} timed out: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def train_workers(facts: dict) -> list[dict]:
    return [row for row in facts["actors"] if row["class"] == "RayTrainWorker"]


@pytest.fixture(scope="module")
def facts(tmp_path_factory, tiny_store) -> dict:
    """One cluster (head, two producer nodes, two consumer nodes) for the three tests: the producer job and a
    pretraining job (on the session's latent store, which it only reads) run at once, and one node of each group is
    lost mid-run (tests/platform/scenarios.py)."""
    return run_scenario("producers_and_consumers", tmp_path_factory.mktemp("cluster"), tiny_store)


def test_producer_and_consumer_on_separate_nodes(facts):
    assert facts["producer_error"] is None and facts["consumer_error"] is None, facts
    assert facts["overlap"], "preprocessing and pretraining never ran at the same time"
    producers, consumers = set(facts["nodes"]["producer"]), set(facts["nodes"]["consumer"])
    pools = [(row["class"], row["node"]) for row in facts["actors"] if row["class"].startswith("MapWorker(")]
    stages = {stage for stage, _ in pools}
    assert {"MapWorker(MapBatches(ScoreOperators))", "MapWorker(MapBatches(VaeEncodeStage))"} <= stages
    assert "MapWorker(MapBatches(KeepSamples))" in stages
    assert {node for _, node in pools} <= producers, pools
    workers = train_workers(facts)
    assert workers and {row["node"] for row in workers} <= consumers
    assert facts["prompt_tasks"] and set(facts["prompt_tasks"]) <= consumers  # the job's sample-prompt task too


def test_survives_producer_node_loss(facts):
    assert facts["removed"]["producer"] is not None, "the run ended before an encoder's node could be removed"
    assert facts["finished"] and facts["producer_error"] is None, facts["producer_error"]
    survivor = set(facts["nodes"]["producer"]) - {facts["removed"]["producer"]}
    encoders = [row for row in facts["actors"] if row["class"] == "MapWorker(MapBatches(VaeEncodeStage))"]
    # The encoder was on the removed node; Ray restarted it (same actor) on the surviving one.
    assert encoders and {row["node"] for row in encoders} == survivor
    stored = facts["stored"]
    assert len(stored) == len(set(stored)), "a sample was stored twice"
    assert set(stored) == set(facts["expected"]) and stored, "a sample was lost"


def test_survives_consumer_node_loss(facts):
    assert facts["removed"]["consumer"] is not None and facts["checkpoints_at_loss"], (
        "no node removed after a checkpoint"
    )
    assert facts["finished"] and facts["consumer_error"] is None, facts["consumer_error"]
    every = facts["checkpoint_every"]
    attempts: dict[int, list[int]] = {}  # the step an attempt started from -> the steps it logged
    for step, restored in facts["steps"]:
        attempts.setdefault(restored, []).append(step)
    assert len(attempts) == 2 and 0 in attempts, attempts  # the first attempt, and one restart
    (resumed_after,) = set(attempts) - {0}
    assert resumed_after >= every and resumed_after % every == 0, attempts  # from a checkpoint, not from scratch
    assert attempts[0][0] == 1 and attempts[0][-1] >= resumed_after, attempts
    assert attempts[resumed_after] == list(range(resumed_after + 1, facts["num_steps"] + 1))
    consumers = set(facts["nodes"]["consumer"])
    assert {row["node"] for row in train_workers(facts)} == consumers  # the lost node, then the spare
    assert pathlib.Path(facts["summary"]["checkpoint"], "transformer", "config.json").is_file()
