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
    """One local Ray for the whole test session (starting Ray costs seconds; a trainer ~25 s).

    Logical CPUs are oversubscribed (16 on 2 cores, as models.ray_runtime does) so Ray Data tasks and train workers never starve each other.
    """
    import logging

    import ray
    from ray.data import DataContext

    # Ray Data's DEBUG records (operator metrics dumps) would flood the logs pytest shows for a failing test.
    logging.getLogger("ray").setLevel(logging.INFO)

    with kept_ray_address_file():
        # No "latest cluster" during the session (put back after it): Ray's state API, which Ray Train's controller
        # uses, then finds the session's Ray as the only one, not a cluster named in a stale file.
        ray_address_file().unlink(missing_ok=True)
        if not ray.is_initialized():
            # address="local": never attach to another Ray that happens to run on this machine.
            ray.init(
                address="local", num_cpus=16, include_dashboard=False, log_to_driver=False, configure_logging=False
            )
        context = DataContext.get_current()
        context.enable_progress_bars = False
        yield ray
        ray.shutdown()


# The resolutions of the tests' latent store: two, so that a curriculum can change resolution.
STORE_RESOLUTIONS = (256, 384)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> str:
    """A small real latent store (40 samples of the sample corpus at 256 and 384 px, encoded with the tiny VAE and
    condition encoder, no Ray), shared by every consumer test."""
    from pipelines.sample_data import encoded_sample_table
    from pipelines.store.writer import commit_table

    folder = tmp_path_factory.mktemp("store")
    commit_table(folder, encoded_sample_table(40, seed=11, resolutions=STORE_RESOLUTIONS))
    return str(folder)


# The shared pretraining run: two phases (the second at a higher resolution and stage), a constant learning rate
# after warm-up (so a run of the first phase alone takes the same steps), a checkpoint every 10 steps, every step
# logged. Tests that only read a trained run's outputs share it: each TorchTrainer start costs tens of seconds here.
SHARED_RUN = "shared"
SHARED_PHASES = [
    {"name": "low", "num_steps": 60, "resolution": 256, "min_stage": 1},
    {"name": "high", "num_steps": 6, "resolution": 384, "min_stage": 2},
]


def shared_run_overrides(store: str, output: str, phases: list[dict]) -> list[str]:
    """``jobs/pretrain.py`` overrides of the shared run (on top of ``configs/pretrain_tiny.yaml``)."""
    import json

    return [
        f"store_dir={store}",
        f"output_dir={output}",
        f"run_name={SHARED_RUN}",
        "batch_size=4",
        "optim.lr=0.0005",
        "optim.warmup_steps=5",
        "optim.schedule=constant",
        "checkpoint_every=10",
        "log_every=1",
        "shuffle_buffer=16",
        "samples.num_steps=2",
        'samples.prompts=["a red apple"]',
        f"phases={json.dumps(phases)}",
    ]


@pytest.fixture(scope="session")
def pretrain_run(ray_session, tiny_store, tmp_path_factory) -> str:
    """The run folder of one ``jobs/pretrain.py`` run of the demo recipe with the shared overrides (its
    ``summary.json`` names the final checkpoint, ``phase-00.done.json`` the first phase's)."""
    import pathlib

    from jobs.pretrain import main

    output = tmp_path_factory.mktemp("pretrain")
    recipe = pathlib.Path(__file__).resolve().parents[1] / "configs" / "pretrain_tiny.yaml"
    main(["--config", str(recipe), *shared_run_overrides(tiny_store, str(output), SHARED_PHASES)])
    return str(output / SHARED_RUN)
