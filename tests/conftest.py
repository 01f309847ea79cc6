"""Shared pytest set-up: offline, deterministic, CPU; tiny-preset fixtures built once per session."""

from __future__ import annotations

import contextlib
import os
import pathlib

# Nothing may reach a model hub: every weight is built (tiny) or read from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from models.ray_runtime import local_system_config, use_local_train_settings  # noqa: E402

# Ray Train's controllers poll their workers every 0.25 s and start no preemption watcher, as in a job's local Ray;
# the variables reach every Ray this session starts and every process it spawns (job drivers, the multi-node
# scenarios).
use_local_train_settings()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests when no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is caught by the tests themselves
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_components():
    """All five parts of the tiny preset (random weights, seed 0). Tests must not modify them."""
    from models.presets import build_components

    return build_components("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_components):
    return tiny_components.tokenizer


def ray_address_file() -> pathlib.Path:
    """Ray's "latest cluster" file (``/tmp/ray/ray_current_cluster``), which ``ray start`` and ``Cluster`` write."""
    from ray._private.utils import get_ray_address_file

    return pathlib.Path(get_ray_address_file(None))


@contextlib.contextmanager
def kept_ray_address_file():
    """Puts Ray's "latest cluster" file back as it was before the block (a test's own ``ray start`` or ``Cluster``
    writes it and dies with it). A file naming a dead cluster costs every later ``TorchTrainer`` run 12 s: Ray
    Train's placement-group cleaner asks the state API about the controller, the state API dials the dead address,
    and the controller's shutdown waits for the cleaner's time-out."""
    path = ray_address_file()
    before = path.read_text() if path.exists() else None
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds; a trainer ~20 s), with its dashboard:
    the job tests submit to it with ``ray job submit`` (``ray_job_address``).

    Logical CPUs are oversubscribed (16 on 2 cores, as models.ray_runtime does) so Ray Data tasks and train workers
    never starve each other; the worker pool has a local Ray's settings (no idle workers started ahead of need, at
    most two kept: ``models.ray_runtime.local_system_config``). The venv's ``bin`` leads the PATH Ray starts with, as
    in an activated venv or an image: a submitted job's ``python`` is the venv's.
    """
    import logging
    import socket
    import sys

    import ray
    from ray.data import DataContext

    # Ray Data's DEBUG records (operator metrics dumps) would flood the logs pytest shows for a failing test.
    logging.getLogger("ray").setLevel(logging.INFO)
    venv_bin = str(pathlib.Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([venv_bin, os.environ.get("PATH", "")])
    with socket.socket() as probe:  # a free port: another Ray on this machine may hold the default 8265
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    with kept_ray_address_file():
        # No "latest cluster" during the session (put back after it): Ray's state API, which Ray Train's controller
        # uses, then finds the session's Ray as the only one, not a cluster named in a stale file.
        ray_address_file().unlink(missing_ok=True)
        if not ray.is_initialized():
            # address="local": never attach to another Ray that happens to run on this machine.
            started = ray.init(
                address="local",
                num_cpus=16,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=dashboard_port,
                log_to_driver=False,
                configure_logging=False,
                _system_config=local_system_config(16),
            )
            os.environ["QWEN_IMAGE_TEST_RAY_JOBS"] = f"http://{started.dashboard_url}"
        DataContext.get_current().enable_progress_bars = False
        yield ray
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_job_address(ray_session) -> str:
    """The session Ray's job-submission address (its dashboard), for ``ray job submit --address``."""
    address = os.environ.get("QWEN_IMAGE_TEST_RAY_JOBS")
    if not address:
        pytest.skip("the session's Ray was started elsewhere, without a known dashboard")
    return address


REPO = pathlib.Path(__file__).resolve().parents[1]

# The random tiny captioner and CLIP make data decisions only when asked for by name, as here.
TINY_MODELS = {"annotation": {"preset": "tiny", "max_new_tokens": 12, "max_pixels": 112 * 112}, "clip": {"clip": {}}}


@pytest.fixture(scope="session")
def curated_corpus(ray_session, tmp_path_factory):
    """``(config, result)`` of one curation run of the sample corpus (24 pairs in WebDataset shards under
    ``<folder>/corpus``, plus 6 synthetic text renderings) with the tiny captioner and CLIP, into ``<folder>/out``.
    Tests that change it work on a copy."""
    from pipelines.curation import CurationConfig, run_curation
    from pipelines.synth.sample_corpus import write_sample_corpus

    folder = tmp_path_factory.mktemp("curated")
    shards = write_sample_corpus(folder / "corpus", 24)
    config = CurationConfig.model_validate(
        {
            "sources": [{"name": "sample", "kind": "webdataset", "paths": shards}],
            "output_dir": str(folder / "out"),
            # Synthetic text rendering mixes in by ratio: 6 synthetic samples for 24 real ones.
            "synthetic_ratio": 0.25,
            "synth": {"resolutions": [[512, 512]]},
            "min_rows_per_file": 1,
            **TINY_MODELS,
        }
    )
    return config, run_curation(config)


@pytest.fixture(scope="session")
def released_folder(tmp_path_factory) -> str:
    """The tiny preset (seed 0) written by diffusers' own ``QwenImagePipeline.save_pretrained`` as the published
    Qwen/Qwen-Image repository is laid out: ``model_index.json`` without our metadata, the transformer and the
    condition encoder in several safetensors files with an index, ``tokenizer/``, ``scheduler/``."""
    from models.presets import build_components, quiet_transformers_progress

    folder = tmp_path_factory.mktemp("released") / "Qwen-Image-tiny"
    with quiet_transformers_progress():
        build_components("tiny").diffusers_pipeline().save_pretrained(folder, max_shard_size="2MB")
    assert len(list((folder / "transformer").glob("*.safetensors"))) > 1  # sharded, as released
    return str(folder)


# The resolutions of the tests' latent store: two, so that a curriculum can change resolution.
STORE_RESOLUTIONS = (256, 384)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> str:
    """A small real latent store (40 samples of the sample corpus at 256 and 384 px, encoded with the tiny VAE and
    condition encoder, no Ray), shared by every consumer test."""
    from store.writer import commit_table

    from .fixtures import encoded_sample_table

    folder = tmp_path_factory.mktemp("store")
    commit_table(folder, encoded_sample_table(40, seed=11, resolutions=STORE_RESOLUTIONS))
    return str(folder)


# The shared pretraining run: two workers with FSDP2 (half a CPU each), two phases (the second at a higher
# resolution and stage), a constant learning rate after warm-up (so a shorter run of the first phase takes the same
# steps), a checkpoint and an export every 20 steps, every step logged, exports in fp32. Tests that only read a
# trained run's outputs share it: each TorchTrainer start costs tens of seconds here.
# While phase 1 runs, the fixture commits 8 "late" rows to the run's store; phase 1 never reads them, phase 2 reads
# only them: phase 2 can run only because a phase lists the shards committed before it starts.
SHARED_RUN = "shared"
LATE_SOURCE = "late"
SHARED_PHASES = [
    {"name": "low", "num_steps": 60, "resolution": 256, "min_stage": 1, "predicates": [["source", "!=", LATE_SOURCE]]},
    {"name": "high", "num_steps": 6, "resolution": 384, "min_stage": 2, "predicates": [["source", "==", LATE_SOURCE]]},
]


def shared_run_overrides(store: str, output: str, phases: list[dict]) -> list[str]:
    """``jobs/pretrain.py`` overrides of the shared run (on top of ``configs/pretrain_tiny.yaml``)."""
    import json

    return [
        f"store_dir={store}",
        f"output_dir={output}",
        f"run_name={SHARED_RUN}",
        "num_workers=2",
        "cpus_per_worker=0.5",
        "parallel.strategy=fsdp",
        "export_dtype=float32",
        "batch_size=2",  # per worker: 4 in all, and phase 2's 6 rows give each worker a batch
        "optim.lr=0.0005",
        "optim.warmup_steps=5",
        "optim.schedule=constant",
        "checkpoint_every=20",
        "export_every=20",  # exports at steps 20 and 40 too, besides the phases' ends
        "log_every=1",
        "shuffle_buffer=16",
        "samples.num_steps=2",
        'samples.prompts=["a red apple"]',
        f"phases={json.dumps(phases)}",
    ]


@pytest.fixture(scope="session")
def submitted_ddp_run(ray_job_address, tiny_store, tmp_path_factory):
    """``ray job submit`` of ``jobs/pretrain.py`` to the session's Ray (its head runs the job agent), as an operator
    submits to a cluster: the shared run's first 20 steps with DDP in place of FSDP, on the same rows (``tiny_store``
    is what the shared run's first phase reads), without sample grids. Token authentication is on (Ray's default),
    so the client sets ``RAY_AUTH_MODE=token``. Returns ``(the finished ray job submit, the run folder)``."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    output = tmp_path_factory.mktemp("ddp")
    phases = [{**SHARED_PHASES[0], "num_steps": 20}]
    command = [
        str(pathlib.Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        f"--address={ray_job_address}",
        f"--working-dir={REPO}",
        "--",
        "python",
        "jobs/pretrain.py",
        "--config",
        "configs/pretrain_tiny.yaml",
        *shared_run_overrides(tiny_store, str(output), phases),
        "parallel.strategy=ddp",
        "samples.prompts=[]",
    ]
    # A fresh head answers "No available agent to submit job" until its job agent registers: seconds when the
    # machine is idle, over a minute on 2 loaded cores.
    deadline = time.time() + 240
    while True:
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in finished.stdout + finished.stderr or time.time() > deadline:
            break
        time.sleep(3)
    return finished, output / SHARED_RUN


@pytest.fixture(scope="session")
def pretrain_store(tiny_store, tmp_path_factory) -> str:
    """The shared run's own store: a copy of ``tiny_store`` (the run appends to it)."""
    import shutil

    folder = tmp_path_factory.mktemp("pretrain_store") / "store"
    shutil.copytree(tiny_store, folder)
    return str(folder)


@pytest.fixture(scope="session")
def pretrain_run(ray_session, pretrain_store, tmp_path_factory) -> str:
    """The run folder of one ``jobs/pretrain.py`` run of the demo recipe with the shared overrides (its
    ``summary.json`` names the final export, ``phase-00.done.json`` the first phase's checkpoint and export)."""
    import threading
    import time

    from jobs.pretrain import main
    from store.writer import commit_table

    from .fixtures import encoded_sample_table

    output = tmp_path_factory.mktemp("pretrain")
    late = encoded_sample_table(8, seed=99, resolutions=STORE_RESOLUTIONS, source=LATE_SOURCE)
    committed = threading.Event()

    def commit_once_training_runs() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not (output / SHARED_RUN / "metrics.csv").exists():
            time.sleep(0.1)
        commit_table(pretrain_store, late)
        committed.set()

    committer = threading.Thread(target=commit_once_training_runs, daemon=True)
    committer.start()
    recipe = REPO / "configs" / "pretrain_tiny.yaml"
    main(["--config", str(recipe), *shared_run_overrides(pretrain_store, str(output), SHARED_PHASES)])
    committer.join(timeout=60)
    assert committed.is_set(), "the late rows were never committed"
    return str(output / SHARED_RUN)
