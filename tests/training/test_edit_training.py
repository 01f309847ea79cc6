"""Editing in the consumers: edit rows batch apart from text-to-image rows, the task mixture selects them, and the
tiny model trained on two (source, instruction, target) triplets maps each source and instruction to its target."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
import torch

from store import columns as C
from store.batches import iter_bucketed_batches
from store.reader import read_table
from store.writer import commit_table
from training.config import PhaseConfig, PretrainConfig

from ..fixtures import encoded_sample_table, encoded_triplet_table

RESOLUTION = 64
VISION_AREA = 56 * 56


def _scene(background: tuple[int, int, int], colour: tuple[int, int, int], shape: str) -> np.ndarray:
    image = np.zeros((RESOLUTION, RESOLUTION, 3), np.uint8)
    image[:] = background
    y, x = np.mgrid[0:RESOLUTION, 0:RESOLUTION]
    centre = RESOLUTION // 2
    if shape == "square":
        inside = (abs(x - centre) < 14) & (abs(y - centre) < 14)
    else:
        inside = (x - centre) ** 2 + (y - centre) ** 2 < 16**2
    image[inside] = colour
    return image


TRIPLETS = [
    (
        _scene((240, 240, 240), (220, 20, 20), "square"),
        "make the square blue",
        _scene((240, 240, 240), (20, 20, 220), "square"),
    ),
    (
        _scene((250, 220, 30), (20, 200, 20), "circle"),
        "change the background to black",
        _scene((0, 0, 0), (20, 200, 20), "circle"),
    ),
]


@pytest.fixture(scope="module")
def edit_store(tmp_path_factory) -> str:
    """Two edit triplets and six text-to-image pairs, at 64 px."""
    folder = tmp_path_factory.mktemp("edit-store")
    commit_table(folder, encoded_triplet_table(TRIPLETS, resolutions=(RESOLUTION,), edit_vision_area=VISION_AREA))
    commit_table(folder, encoded_sample_table(6, seed=3, resolutions=(RESOLUTION,), max_upscale=8.0))
    return str(folder)


def test_edit_rows_batch_apart_from_pairs(edit_store):
    table = read_table(edit_store, RESOLUTION, extra_columns=[C.TASK])
    assert sorted(table.column(C.TASK).to_pylist()) == ["edit"] * 2 + ["t2i"] * 6
    batches = list(iter_bucketed_batches([table], 3, RESOLUTION))
    edits = [batch for batch in batches if "source_latents" in batch]
    pairs = [batch for batch in batches if "source_latents" not in batch]
    # The two edit rows share a batch of their own; the six pairs fill the others (one bucket per batch).
    assert [len(batch["sample_id"]) for batch in edits] == [2]
    assert sum(len(batch["sample_id"]) for batch in pairs) == 6
    edit = edits[0]
    assert edit["source_latents"].shape == edit["latents"].shape
    assert not torch.equal(edit["source_latents"], edit["latents"])  # the source image, not the target
    # Mixed rows handed to decode_batch directly are an error, not a silent mix.
    from store.batches import decode_batch

    edits = table.filter(pa.compute.equal(table.column(C.TASK), "edit"))
    source = C.source_latents_column(RESOLUTION)
    mixed = edits.set_column(
        edits.column_names.index(source), source, pa.array([edits.column(source)[0].as_py(), None], pa.binary())
    )
    with pytest.raises(ValueError, match="not both"):
        decode_batch(mixed, RESOLUTION)


def test_task_weights_become_the_task_mixture():
    phase = PhaseConfig(name="p", num_steps=1, tasks={"edit": 1.0, "t2i": 0.0})
    assert phase.mixture == {"task": {"edit": 1.0, "t2i": 0.0}}
    with pytest.raises(ValueError, match="task"):
        PhaseConfig(name="p", num_steps=1, tasks={"paint": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        PhaseConfig(name="p", num_steps=1, tasks={"edit": -1.0})
    # Multi-image edits have their own weight (a phase can leave them out: they train on one reference for now).
    phase = PhaseConfig(name="p", num_steps=1, tasks={"edit": 1.0, "edit_plus": 0.0})
    assert phase.mixture == {"task": {"edit": 1.0, "edit_plus": 0.0}}


def test_a_phase_with_multi_reference_rows_is_refused_before_training(tmp_path):
    """Edit-Plus rows (several references) cannot train yet (the loop conditions on one frame): a phase that would
    read them is refused before any worker starts, naming the fix; weighed out, it runs."""
    from training.pretrain import count_phase_rows

    folder = tmp_path / "store"
    commit_table(folder, encoded_triplet_table(TRIPLETS, task=C.EDIT_PLUS, resolutions=(RESOLUTION,)))
    commit_table(folder, encoded_sample_table(6, seed=3, resolutions=(RESOLUTION,), max_upscale=8.0))
    phases = [{"name": "p", "num_steps": 1, "resolution": RESOLUTION, "min_stage": 0}]
    config = PretrainConfig(store_dir=str(folder), preset="tiny", batch_size=2, phases=phases)
    with pytest.raises(ValueError, match="selects 2 edit_plus rows .* set tasks: {edit_plus: 0}"):
        count_phase_rows(config, config.phases[0])
    weighed_out = config.phases[0].model_copy(update={"tasks": {C.T2I: 1.0, C.EDIT_PLUS: 0.0}})
    assert count_phase_rows(config, PhaseConfig.model_validate(weighed_out.model_dump())) == 8


def test_edit_memorizes(ray_session, edit_store, tmp_path):
    """Trained (Ray Train, from the store, the phase selecting edit rows by its task weights) on two triplets, the
    tiny model edits each source with its instruction into its own target, through the inference path (source
    image resized and VAE-encoded, instruction and image through the condition encoder)."""
    from models.generation import TextToImage
    from training.metrics import read_metrics
    from training.pretrain import run_pretraining

    steps = 800
    from PIL import Image

    Image.fromarray(TRIPLETS[0][0]).save(tmp_path / "input.png")
    config = PretrainConfig.model_validate(
        {
            "store_dir": edit_store,
            "output_dir": str(tmp_path),
            "run_name": "edit",
            "batch_size": 2,
            "cpus_per_worker": 1,
            "optim": {"lr": 2e-3, "warmup_steps": 20, "weight_decay": 0.0},
            "log_every": 100,
            "checkpoint_every": steps,
            "shuffle_buffer": 0,
            "samples": {
                "num_steps": 2,
                "prompts": [],
                "edits": [{"image": str(tmp_path / "input.png"), "instruction": TRIPLETS[0][1]}],
                "edit_vision_area": VISION_AREA,
            },
            "phases": [
                {
                    "name": "edit",
                    "num_steps": steps,
                    "resolution": RESOLUTION,
                    "min_stage": 1,
                    "tasks": {"t2i": 0.0, "edit": 1.0},
                }
            ],
        }
    )
    summary = run_pretraining(config)
    assert int(read_metrics(summary["metrics"])[-1]["step"]) == steps
    (grid,) = pathlib.Path(summary["samples"]).glob("*-edits.png")  # input | result, for a person to look at
    assert not list(pathlib.Path(summary["samples"]).glob("*-edit.png"))  # no prompts: no text-to-image grid

    stored = read_table(edit_store, RESOLUTION, extra_columns=[C.TASK])
    targets = {}
    for row in stored.filter(pa.compute.equal(stored.column(C.TASK), "edit")).to_pylist():
        latents = np.frombuffer(row[C.latents_column(RESOLUTION)], dtype="<f2").reshape(16, 8, 8)
        targets[row[C.CAPTION]] = torch.from_numpy(latents.astype(np.float32))
    editor = TextToImage.from_checkpoint(summary["checkpoint"])
    instructions = [instruction for _, instruction, _ in TRIPLETS]

    def edit(sources: list[np.ndarray]) -> torch.Tensor:
        return editor.edit_latents(
            instructions,
            sources,
            height=RESOLUTION,
            width=RESOLUTION,
            num_steps=20,
            true_cfg_scale=1.0,
            seeds=[0, 0],
            vision_area=VISION_AREA,
        )

    edited = edit([source for source, _, _ in TRIPLETS])
    target = torch.stack([targets[instruction] for instruction in instructions])
    distances = torch.cdist(edited.flatten(1), target.flatten(1))  # [edited i, target j]
    # Each edit lands nearer its own target than the other one's: the model uses the source and the instruction.
    assert distances[0, 0] < distances[0, 1] and distances[1, 1] < distances[1, 0], distances
    # Swapping the sources between the instructions changes the outputs: the source image conditions the edit.
    swapped = edit([source for source, _, _ in reversed(TRIPLETS)])
    assert (swapped - edited).abs().max() > 1e-2


def test_edit_configs_name_the_edit_source_and_task_mixture():
    """The producer and pretraining recipes of the README take an edit source and per-phase task weights."""
    from models.config import load_config
    from pipelines.curation import CurationConfig

    curation = load_config(CurationConfig, "configs/preprocess_edit_tiny.yaml", [])
    assert curation.sources[0].is_edit and curation.synthetic_edits > 0
    assert curation.encode.store_dir
    pretrain = load_config(PretrainConfig, "configs/pretrain_edit_tiny.yaml", [])
    assert pretrain.store_dir == curation.encode.store_dir
    weights = [phase.mixture["task"] for phase in pretrain.phases]
    assert weights[0]["depth"] == 0.0 and weights[1]["depth"] == 0.5
