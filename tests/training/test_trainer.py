"""The shared Ray Train set-up (``training.trainer``): resources, run folder, the config every worker receives."""

from __future__ import annotations

import pytest

import training.trainer
from training.config import PretrainConfig
from training.post_training.config import DpoConfig
from training.trainer import fit_trainer, run_config, scaling_config
from training.vae_finetune import VaeFinetuneConfig


def test_scaling_config_requests_worker_resources_on_every_config(released_folder):
    consumer = {"consumer": 0.01}
    configs = [
        PretrainConfig(store_dir="store", phases=[{"name": "p", "num_steps": 1}], worker_resources=consumer),
        DpoConfig(
            init=released_folder,
            run_name="dpo",
            pairs_dir="pairs",
            num_steps=1,
            worker_resources=consumer,
            num_workers=3,
            cpus_per_worker=2.5,
        ),
        VaeFinetuneConfig(worker_resources=consumer, num_workers=2, cpus_per_worker=4),
    ]
    got = [scaling_config(config) for config in configs]
    assert [s.num_workers for s in got] == [1, 3, 2]
    assert [s.resources_per_worker for s in got] == [
        {"CPU": 1.0, "consumer": 0.01},
        {"CPU": 2.5, "consumer": 0.01},
        {"CPU": 4, "consumer": 0.01},
    ]


def test_scaling_config_asks_one_gpu_per_worker_only_with_use_gpu():
    assert scaling_config(VaeFinetuneConfig()).resources_per_worker == {"CPU": 1}
    assert not scaling_config(VaeFinetuneConfig()).use_gpu
    on_gpu = scaling_config(VaeFinetuneConfig(use_gpu=True, worker_resources={"consumer": 0.5}))
    assert on_gpu.use_gpu
    assert on_gpu.resources_per_worker == {"CPU": 1, "GPU": 1, "consumer": 0.5}


def test_run_config_names_the_folder_and_keeps_the_checkpoint_and_failure_policy(tmp_path):
    config = VaeFinetuneConfig(keep_checkpoints=3, max_failures=4)
    run = run_config(config, name="vae-00", storage_path=tmp_path / "ray")
    assert (run.name, run.storage_path) == ("vae-00", str(tmp_path / "ray"))
    assert run.checkpoint_config.num_to_keep == 3
    assert run.failure_config.max_failures == 4


class _Result:
    def __init__(self, error: BaseException | None):
        self.error = error


class _RecordingTrainer:
    """Stands in for ``TorchTrainer``: records its arguments, and ``fit`` returns a result with ``error``."""

    calls: list[dict] = []
    error: BaseException | None = None

    def __init__(self, loop, **kwargs):
        type(self).calls.append({"loop": loop, **kwargs})

    def fit(self) -> _Result:
        return _Result(type(self).error)


def _loop(loop_config: dict) -> None:
    raise AssertionError("the stand-in trainer never runs the loop")


def test_fit_trainer_sends_the_config_then_the_extra_keys(monkeypatch, tmp_path):
    monkeypatch.setattr(training.trainer, "TorchTrainer", _RecordingTrainer)
    monkeypatch.setattr(_RecordingTrainer, "calls", [])
    config = VaeFinetuneConfig(run_name="r", worker_resources={"consumer": 0.01})
    result = fit_trainer(_loop, config, name="r", storage_path=tmp_path, loop_config={"phase_index": 2})
    assert result.error is None
    (call,) = _RecordingTrainer.calls
    assert call["loop"] is _loop
    assert call["train_loop_config"] == {"config": config.model_dump(mode="json"), "phase_index": 2}
    assert VaeFinetuneConfig.model_validate(call["train_loop_config"]["config"]) == config
    assert call["scaling_config"].resources_per_worker == {"CPU": 1, "consumer": 0.01}
    assert call["run_config"].storage_path == str(tmp_path)
    assert call["datasets"] is None


def test_fit_trainer_raises_the_workers_error(monkeypatch, tmp_path):
    monkeypatch.setattr(training.trainer, "TorchTrainer", _RecordingTrainer)
    monkeypatch.setattr(_RecordingTrainer, "error", ValueError("worker failed at step 3"))
    with pytest.raises(ValueError, match="worker failed at step 3"):
        fit_trainer(_loop, VaeFinetuneConfig(), name="r", storage_path=tmp_path)
