"""Pretraining on Ray Train from the latent store: loss, phases, restarts, new shards, single-shape batches."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
import torch
from safetensors.torch import load_file

from store.reader import read_table
from training.config import PhaseConfig, PretrainConfig, limit_steps
from training.data import phase_dataset, worker_batches
from training.metrics import read_metrics
from training.pretrain import run_pretraining

from ..conftest import LATE_SOURCE, SHARED_PHASES, SHARED_RUN, shared_run_overrides

RECIPE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "pretrain_tiny.yaml"


def _config(store: str, output: pathlib.Path, phases: list[dict], **overrides) -> PretrainConfig:
    base = {
        "store_dir": store,
        "output_dir": str(output),
        "run_name": "t",
        "batch_size": 4,
        "cpus_per_worker": 1,
        "optim": {"lr": 5e-4, "warmup_steps": 5},
        "log_every": 1,
        "checkpoint_every": 10,
        "shuffle_buffer": 16,
        "samples": {"prompts": []},  # no grid: these runs are about data and phases
        "phases": phases,
    }
    return PretrainConfig.model_validate({**base, **overrides})


def _weights(checkpoint: str | pathlib.Path) -> dict[str, torch.Tensor]:
    folder = pathlib.Path(checkpoint) / "transformer"
    weights = {}
    for path in folder.glob("*.safetensors"):
        weights.update(load_file(str(path)))
    return weights


def test_phase_rows_and_single_shape_batches(ray_session, tiny_store):
    phase = PhaseConfig(name="p", num_steps=1, resolution=256, min_stage=3, mixture={"category": {"general": 0.5}})
    dataset = phase_dataset(tiny_store, phase, seed=0)
    ids = set()
    for batch in worker_batches(dataset, 3, 256, shuffle_buffer=8, seed=0):
        assert batch["latents"].ndim == 4 and batch["latents"].shape[1] == 16
        assert batch["text_embeds"].shape[:2] == batch["text_mask"].shape
        ids.update(batch["sample_id"])
    table = read_table(tiny_store, 256, min_stage=3, extra_columns=["category", "stage"])
    eligible = set(table.column("sample_id").to_pylist())
    texts = {
        s
        for s, c in zip(table.column("sample_id").to_pylist(), table.column("category").to_pylist(), strict=True)
        if c == "text_rendering"
    }
    assert ids <= eligible and len(ids) > 0
    assert texts - ids == set() or len(texts - ids) <= 2  # text rows are kept (weight 1), up to partial batches
    assert len(ids - texts) < len(eligible - texts)  # about half the general rows were thinned out


def _rows_by_step(run: str) -> dict[int, dict]:
    return {int(row["step"]): row for row in read_metrics(pathlib.Path(run) / "metrics.csv")}


def test_loss_decreases(pretrain_run):
    summary = json.loads((pathlib.Path(pretrain_run) / "summary.json").read_text())
    rows = read_metrics(summary["metrics"])
    losses = [float(row["loss"]) for row in rows if row["phase"] == SHARED_PHASES[0]["name"]]
    assert len(losses) == SHARED_PHASES[0]["num_steps"]
    tenth = len(losses) // 10
    assert sum(losses[-tenth:]) / tenth < sum(losses[:tenth]) / tenth
    assert pathlib.Path(summary["loss_curve"]).is_file()
    assert sorted(path.name for path in pathlib.Path(summary["samples"]).glob("*.png")) == [
        "step0000060-low.png",
        "step0000066-high.png",
    ]
    assert (pathlib.Path(summary["checkpoint"]) / "transformer" / "config.json").is_file()
    assert all(0 <= float(row["data_wait_fraction"]) <= 1 for row in rows)


def test_progressive_phases(pretrain_run):
    by_step = _rows_by_step(pretrain_run)
    assert sorted(by_step) == list(range(1, 67))
    assert [by_step[s]["phase"] for s in (1, 60, 61, 66)] == ["low", "low", "high", "high"]
    assert [int(by_step[s]["resolution"]) for s in (1, 61)] == [256, 384]
    # Latent tokens per sample follow the resolution: about (384/256)^2 more in the second phase.
    per_sample = {s: float(by_step[s]["latent_tokens_per_s"]) / float(by_step[s]["samples_per_s"]) for s in (3, 63)}
    assert per_sample[63] / per_sample[3] == pytest.approx((384 / 256) ** 2, rel=0.25)
    # The second phase started from the first one's final checkpoint (a fresh phase restores from no mid-phase one).
    assert {int(by_step[s]["restored_step"]) for s in range(61, 67)} == {60}


def _export_of_phase(run: str | pathlib.Path, index: int) -> pathlib.Path:
    return pathlib.Path(json.loads((pathlib.Path(run) / f"phase-{index:02d}.done.json").read_text())["export"])


def test_fsdp_resume_after_worker_kill(pretrain_run, pretrain_store, tmp_path):
    """Two FSDP workers; rank 0's worker process is SIGKILLed at step 12, after the step-10 checkpoint; Ray Train
    restarts the group, which reshards that checkpoint. The metrics show the second attempt starting at step 11
    (nothing before it redone, which a restart from scratch would do, since noise and data are seeded by step), and
    the final weights (step 20) equal the uninterrupted shared run's export at step 20 (``export_every``)."""
    from jobs.pretrain import main

    overrides = shared_run_overrides(pretrain_store, str(tmp_path), [{**SHARED_PHASES[0], "num_steps": 20}])
    no_grid = "samples.prompts=[]"  # the weights are compared, not pictures
    killed = main(["--config", str(RECIPE), *overrides, "checkpoint_every=10", "fail_at_step=12", no_grid])
    marker = (tmp_path / SHARED_RUN / ".failed-at-12").read_text()
    pid = int(re.search(r"process (\d+) killed with SIGKILL", marker).group(1))
    assert not pathlib.Path(f"/proc/{pid}").exists()  # that worker process is gone
    attempts: dict[int, list[int]] = {}
    for row in read_metrics(killed["metrics"]):
        attempts.setdefault(int(row["restored_step"]), []).append(int(row["step"]))
    assert attempts == {0: list(range(1, 12)), 10: list(range(11, 21))}
    config = json.loads((tmp_path / SHARED_RUN / "config.json").read_text())
    assert (config["num_workers"], config["parallel"]["strategy"]) == (2, "fsdp")
    uninterrupted = pathlib.Path(pretrain_run) / "exports" / "step0000020-low"
    expected, actual = _weights(uninterrupted), _weights(killed["checkpoint"])
    assert expected.keys() == actual.keys()
    assert all(torch.equal(actual[name], expected[name]) for name in expected)  # bit for bit


def test_fsdp_matches_ddp(pretrain_run, submitted_ddp_run):
    """The loss-parity rule for any change to parallelism: 2-worker DDP (the session's ``ray job submit`` run) gives
    the 2-worker FSDP shared run's losses (fp32 on CPU) for its first 20 steps, within 1e-5 relative."""
    finished, ddp_run = submitted_ddp_run
    assert finished.returncode == 0, finished.stderr[-3000:]
    config = json.loads((ddp_run / "config.json").read_text())
    assert (config["num_workers"], config["parallel"]["strategy"]) == (2, "ddp")
    fsdp_losses = {
        int(row["step"]): float(row["loss"]) for row in read_metrics(pathlib.Path(pretrain_run) / "metrics.csv")
    }
    ddp_losses = {int(row["step"]): float(row["loss"]) for row in read_metrics(ddp_run / "metrics.csv")}
    assert sorted(ddp_losses) == list(range(1, 21))
    for step, loss in ddp_losses.items():
        assert loss == pytest.approx(fsdp_losses[step], rel=1e-5), step


def test_fsdp_phase_handoff_and_sample_grid(pretrain_run):
    """The shared run (two FSDP workers, two phases) handed its first phase's checkpoint to the second and wrote a
    sample grid at the end of each phase, from a forward pass that every rank ran (no deadlock)."""
    config = json.loads((pathlib.Path(pretrain_run) / "config.json").read_text())
    assert (config["num_workers"], config["parallel"]["strategy"]) == (2, "fsdp")
    by_step = _rows_by_step(pretrain_run)
    assert {int(by_step[s]["restored_step"]) for s in range(61, 67)} == {60}
    grids = sorted((pathlib.Path(pretrain_run) / "samples").glob("*.png"))
    assert [grid.name for grid in grids] == ["step0000060-low.png", "step0000066-high.png"]
    for index in range(2):
        assert (_export_of_phase(pretrain_run, index) / "transformer" / "config.json").is_file()
    # export_every=20 adds exports within the first phase; a phase's end is exported once.
    exports = sorted(path.name for path in (pathlib.Path(pretrain_run) / "exports").iterdir())
    assert exports == ["step0000020-low", "step0000040-low", "step0000060-low", "step0000066-high"]


def test_pretrain_export_opens_in_diffusers(pretrain_run):
    """The final export of the shared ``jobs/pretrain.py`` run is a complete pipeline folder: diffusers'
    ``QwenImagePipeline.from_pretrained`` opens it offline and draws the image our generator draws from it. Its
    frozen parts are links to the run's base, not copies."""
    import numpy as np
    from diffusers import QwenImagePipeline

    from models.checkpoint import read_metadata
    from models.generation import TextToImage

    export = pathlib.Path(json.loads((pathlib.Path(pretrain_run) / "summary.json").read_text())["checkpoint"])
    assert all((export / part).is_symlink() for part in ("vae", "text_encoder", "tokenizer", "scheduler"))
    # It records the vision area its edits were encoded at (the session store has no header: the default).
    assert read_metadata(export)["edit_vision_area"] == 384 * 384
    # Written by two FSDP workers, it names the model's own class (not FSDP2's wrapper class): other tools read it.
    assert (
        json.loads((export / "transformer" / "config.json").read_text())["_class_name"] == "QwenImageTransformer2DModel"
    )
    pipe = QwenImagePipeline.from_pretrained(export, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    call = {"height": 64, "width": 64, "true_cfg_scale": 4.0, "generator": torch.Generator().manual_seed(3)}
    reference = pipe("a red apple", negative_prompt=" ", num_inference_steps=3, output_type="np", **call).images
    call["generator"] = torch.Generator().manual_seed(3)
    ours = TextToImage.from_checkpoint(str(export))(["a red apple"], num_steps=3, **call)
    assert ours.shape == (1, 64, 64, 3)
    assert np.abs(ours.astype(int) - np.round(reference * 255).astype(int)).max() <= 1


def test_phase_switch_reads_new_shards(pretrain_run, pretrain_store):
    """The shared run's phase 2 reads only the rows committed to its store while phase 1 ran (tests/conftest.py):
    it trained, so the phase listed the store when it started."""
    phases = [row["phase"] for row in read_metrics(pathlib.Path(pretrain_run) / "metrics.csv")]
    assert phases.count("high") == SHARED_PHASES[1]["num_steps"] and phases[-1] == "high"
    late = read_table(pretrain_store, 384, min_stage=2, predicates=[("source", "==", LATE_SOURCE)])
    assert late.num_rows == 6  # what phase 2 could read: 6 of the 8 late rows reach stage 2


def test_limit_steps():
    config = _config("s", pathlib.Path("o"), [{"name": "a", "num_steps": 5}, {"name": "b", "num_steps": 5}])
    assert [p.num_steps for p in limit_steps(config, 7).phases] == [5, 2]
    assert [p.num_steps for p in limit_steps(config, 3).phases] == [3]


def test_streaming_feed_trains_without_a_store(curated_corpus, tmp_path):
    """Feed "stream": curation runs in the job (here it resumes after the complete scoring pass of a copy of the
    session's curated corpus, and labels it again), each phase's kept samples are encoded on the fly and trained on;
    no latent store is written."""
    import shutil

    import yaml

    corpus_config, _ = curated_corpus
    shutil.copytree(corpus_config.output_dir, tmp_path / "curated")
    curation = {
        "sources": [source.model_dump(mode="json") for source in corpus_config.sources],
        "output_dir": str(tmp_path / "curated"),
        "min_rows_per_file": 1,
        "encode": {"resolutions": [256], "min_stage": 1},
    }
    config = PretrainConfig.model_validate(
        {
            "feed": "stream",
            "curation": curation,
            "output_dir": str(tmp_path / "out"),
            "run_name": "s",
            "batch_size": 2,
            "cpus_per_worker": 1,
            "log_every": 1,
            "checkpoint_every": 3,
            "shuffle_buffer": 0,
            "samples": {"prompts": []},
            "phases": [{"name": "p1", "num_steps": 3, "resolution": 256, "min_stage": 1}],
        }
    )
    summary = run_pretraining(config)
    rows = read_metrics(summary["metrics"])
    assert [int(row["step"]) for row in rows][-1] == 3
    assert all(int(row["resolution"]) == 256 for row in rows)
    assert (pathlib.Path(summary["checkpoint"]) / "transformer" / "config.json").is_file()
    assert (tmp_path / "curated" / "labels.parquet").is_file()
    written = yaml.safe_load((tmp_path / "curated" / "curation_config.yaml").read_text())
    assert written["encode"]["resolutions"] == [256] and written["encode"]["store_dir"] is None  # the job's own
    assert not list(tmp_path.rglob("_manifest"))  # nothing went through a store


def test_unreadable_sample_edit_image_fails_before_anything_starts(tmp_path):
    (tmp_path / "edit.png").write_bytes(b"not an image")
    config = _config(
        str(tmp_path / "store"),
        tmp_path / "out",
        [{"name": "p", "num_steps": 1}],
        samples={"prompts": [], "edits": [{"image": str(tmp_path / "edit.png"), "instruction": "make it red"}]},
    )
    with pytest.raises(ValueError, match="samples.edits: cannot read image"):
        run_pretraining(config)
    assert not (tmp_path / "out").exists()  # no run folder, no task, no workers


def test_feed_config_names_what_is_missing():
    with pytest.raises(ValueError, match="store_dir"):
        PretrainConfig.model_validate({"phases": [{"name": "p", "num_steps": 1}]})
    with pytest.raises(ValueError, match="curation"):
        PretrainConfig.model_validate({"feed": "stream", "phases": [{"name": "p", "num_steps": 1}]})


def test_caption_dropout_replaces_rows_with_the_empty_prompt():
    from models.prompt_embeds import PromptEmbeds
    from training.loop import drop_captions

    embeds = torch.arange(4 * 3 * 2, dtype=torch.float32).view(4, 3, 2) + 1
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    empty = torch.full((5, 2), -1.0)  # longer than the batch's rows: the batch is padded to it
    kept, dropped = drop_captions(PromptEmbeds(embeds, mask), empty, 0.0, torch.Generator().manual_seed(0))
    assert not dropped.any() and kept.embeds is embeds
    out, dropped = drop_captions(PromptEmbeds(embeds, mask), empty, 0.5, torch.Generator().manual_seed(1))
    assert 0 < int(dropped.sum()) < 4 and out.embeds.shape == (4, 5, 2)
    for row in range(4):
        if dropped[row]:
            assert torch.equal(out.embeds[row], empty) and out.mask[row].tolist() == [1] * 5
        else:
            assert torch.equal(out.embeds[row, :3], embeds[row]) and not out.embeds[row, 3:].any()
            assert out.mask[row].tolist() == mask[row].tolist() + [0, 0]
    everything, dropped = drop_captions(PromptEmbeds(embeds, mask), empty, 0.999, torch.Generator().manual_seed(0))
    assert dropped.all() and torch.equal(everything.embeds, empty.expand(4, 5, 2))
