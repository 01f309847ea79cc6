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


# Edit-Plus: one instruction over two pictures, the same two in either order; the order decides the target.
PLUS_INSTRUCTION = "put the shape of picture 1 on the background of picture 2"
PLUS_TRIPLETS = [
    (
        [TRIPLETS[0][0], TRIPLETS[1][0]],
        PLUS_INSTRUCTION,
        _scene((250, 220, 30), (220, 20, 20), "square"),
    ),
    (
        [TRIPLETS[1][0], TRIPLETS[0][0]],
        PLUS_INSTRUCTION,
        _scene((240, 240, 240), (20, 200, 20), "circle"),
    ),
]


@pytest.fixture(scope="module")
def edit_store(tmp_path_factory) -> str:
    """Two edit triplets, two Edit-Plus triplets (two inputs each) and six text-to-image pairs, at 64 px."""
    folder = tmp_path_factory.mktemp("edit-store")
    commit_table(folder, encoded_triplet_table(TRIPLETS, resolutions=(RESOLUTION,), edit_vision_area=VISION_AREA))
    commit_table(
        folder,
        encoded_triplet_table(PLUS_TRIPLETS, task=C.EDIT_PLUS, resolutions=(RESOLUTION,), edit_vision_area=VISION_AREA),
    )
    commit_table(folder, encoded_sample_table(6, seed=3, resolutions=(RESOLUTION,), max_upscale=8.0))
    return str(folder)


def test_edit_rows_batch_apart_from_pairs(edit_store):
    table = read_table(edit_store, RESOLUTION, extra_columns=[C.TASK])
    assert sorted(table.column(C.TASK).to_pylist()) == ["edit"] * 2 + ["edit_plus"] * 2 + ["t2i"] * 6
    batches = list(iter_bucketed_batches([table], 3, RESOLUTION))
    edits = [batch for batch in batches if C.SOURCE_LATENTS in batch and C.EXTRA_SOURCE_LATENTS not in batch]
    plus = [batch for batch in batches if C.EXTRA_SOURCE_LATENTS in batch]
    pairs = [batch for batch in batches if C.SOURCE_LATENTS not in batch]
    # The two edit rows share a batch of their own, as do the two Edit-Plus rows (two inputs each); the six pairs
    # fill the others (one bucket per batch).
    assert [len(batch[C.SAMPLE_ID]) for batch in edits] == [2]
    assert [len(batch[C.SAMPLE_ID]) for batch in plus] == [2]
    assert sum(len(batch[C.SAMPLE_ID]) for batch in pairs) == 6
    edit = edits[0]
    assert edit[C.SOURCE_LATENTS].shape == edit[C.LATENTS].shape
    assert not torch.equal(edit[C.SOURCE_LATENTS], edit[C.LATENTS])  # the source image, not the target
    # Edit-Plus: reference 1 in source_latents, reference 2 in extra_source_latents [B, 1, 16, h, w]; the second
    # row holds the first row's pictures in the other order.
    both = plus[0]
    assert both[C.EXTRA_SOURCE_LATENTS].shape == (2, 1, *both[C.LATENTS].shape[1:])
    assert torch.equal(both[C.SOURCE_LATENTS][0], both[C.EXTRA_SOURCE_LATENTS][1, 0])
    assert torch.equal(both[C.EXTRA_SOURCE_LATENTS][0, 0], both[C.SOURCE_LATENTS][1])
    # Mixed rows handed to decode_batch directly are an error, not a silent mix.
    from store.batches import decode_batch

    edits = table.filter(pa.compute.equal(table.column(C.TASK), "edit"))
    source = C.source_latents_column(RESOLUTION)
    mixed = edits.set_column(
        edits.column_names.index(source), source, pa.array([edits.column(source)[0].as_py(), None], pa.binary())
    )
    with pytest.raises(ValueError, match="not both"):
        decode_batch(mixed, RESOLUTION)
    one_and_two = table.filter(pa.compute.is_in(table.column(C.TASK), pa.array(["edit", "edit_plus"]))).slice(1, 2)
    with pytest.raises(ValueError, match=r"one number of input images, got \[1, 2\]"):
        decode_batch(one_and_two, RESOLUTION)


def test_ray_data_feed_keeps_every_reference(ray_session, edit_store):
    """Through Ray Data (the "dataset" feed, the task mixture applied by an Arrow map) Edit-Plus rows keep their
    references 2..n: a list column that went through numpy batches would come back as pickled objects."""
    from training.data import phase_dataset, worker_batches

    phase = PhaseConfig(name="p", num_steps=1, resolution=RESOLUTION, tasks={"t2i": 0.0, "edit": 0.0, "edit_plus": 1.0})
    batches = list(worker_batches(phase_dataset(edit_store, phase, seed=0), 2, RESOLUTION, shuffle_buffer=0, seed=0))
    assert [tuple(batch[C.EXTRA_SOURCE_LATENTS].shape) for batch in batches] == [(2, 1, 16, 8, 8)]


def test_task_weights_become_the_task_mixture():
    phase = PhaseConfig(name="p", num_steps=1, tasks={"edit": 1.0, "t2i": 0.0})
    assert phase.mixture == {"task": {"edit": 1.0, "t2i": 0.0}}
    with pytest.raises(ValueError, match="task"):
        PhaseConfig(name="p", num_steps=1, tasks={"paint": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        PhaseConfig(name="p", num_steps=1, tasks={"edit": -1.0})
    # Multi-image edits and inpainting have weights of their own.
    phase = PhaseConfig(name="p", num_steps=1, tasks={"edit": 1.0, "edit_plus": 0.5, "inpaint": 0.0})
    assert phase.mixture == {"task": {"edit": 1.0, "edit_plus": 0.5, "inpaint": 0.0}}


def test_edit_samples_take_one_image_or_several():
    from training.config import EditSample

    assert EditSample(image="a.png", instruction="x").template == "edit"
    several = EditSample(images=["a.png", "b.png"], instruction="x")
    assert several.template == "edit_plus" and several.paths == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="an input image .* or several"):
        EditSample(image="a.png", images=["b.png"], instruction="x")
    with pytest.raises(ValueError, match="an input image .* or several"):
        EditSample(instruction="x")
    with pytest.raises(ValueError, match="at most 3"):
        EditSample(images=["a.png"] * 4, instruction="x")


@pytest.fixture(scope="module")
def edit_run(ray_session, edit_store, tmp_path_factory) -> dict:
    """The tiny model trained (Ray Train, from the store, the phase selecting edit rows by its task weights) on the
    two edit and the two Edit-Plus triplets, with an edit and an Edit-Plus sample grid."""
    from PIL import Image

    from training.pretrain import run_pretraining

    folder = tmp_path_factory.mktemp("edit-run")
    for index, (image, _, _) in enumerate(TRIPLETS):
        Image.fromarray(image).save(folder / f"input{index}.png")
    config = PretrainConfig.model_validate(
        {
            "store_dir": edit_store,
            "output_dir": str(folder),
            "run_name": "edit",
            "batch_size": 2,
            "cpus_per_worker": 1,
            "optim": {"lr": 2e-3, "warmup_steps": 20, "weight_decay": 0.0, "schedule": "cosine"},
            "log_every": 100,
            "checkpoint_every": EDIT_STEPS,
            "shuffle_buffer": 0,
            "samples": {
                "num_steps": 2,
                "prompts": [],
                "edits": [
                    {"image": str(folder / "input0.png"), "instruction": TRIPLETS[0][1]},
                    {
                        "images": [str(folder / "input0.png"), str(folder / "input1.png")],
                        "instruction": PLUS_INSTRUCTION,
                    },
                ],
                "edit_vision_area": VISION_AREA,
            },
            "phases": [
                {
                    "name": "edit",
                    "num_steps": EDIT_STEPS,
                    "resolution": RESOLUTION,
                    "min_stage": 1,
                    "tasks": {"t2i": 0.0, "edit": 1.0, "edit_plus": 1.0},
                }
            ],
        }
    )
    return run_pretraining(config)


EDIT_STEPS = 1200


def _stored_targets(store: str, task: str) -> list[torch.Tensor]:
    """The target latents of the stored rows of ``task`` in the order of their triplets: edit rows by instruction,
    Edit-Plus rows by their first picture (the edit triplet whose input it is)."""
    stored = read_table(store, RESOLUTION, extra_columns=[C.TASK]).to_pylist()
    source = C.source_latents_column(RESOLUTION)
    firsts = {row[source]: [i for _, i, _ in TRIPLETS].index(row[C.CAPTION]) for row in stored if row[C.TASK] == "edit"}
    rows = sorted((row for row in stored if row[C.TASK] == task), key=lambda row: firsts[row[source]])
    return [_latents(row[C.latents_column(RESOLUTION)]) for row in rows]


def _latents(value: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(value, dtype="<f2").reshape(16, 8, 8).astype(np.float32))


def _nearest_own_target(edited: torch.Tensor, targets: list[torch.Tensor]) -> None:
    """Each output lies on its own target's side, along the line from one target to the other: its projection
    there (0 at the midpoint, +0.5 at its own target, -0.5 at the other) is positive. The targets differ in a small
    region (a shape's or the background's colour), so the projection reads that region and not the error every
    sample shares."""
    first, second = targets
    direction = (first - second).flatten()
    middle = ((first + second) / 2).flatten()
    sides = [float((edited[i].flatten() - middle) @ direction / (direction @ direction)) for i in range(2)]
    assert sides[0] > 0.1 and sides[1] < -0.1, sides


def test_edit_memorizes(edit_run, edit_store):
    """Each source with its instruction is edited into its own target, through the inference path (source image
    resized and VAE-encoded, instruction and image through the condition encoder)."""
    from models.generation import TextToImage
    from training.metrics import read_metrics

    assert int(read_metrics(edit_run["metrics"])[-1]["step"]) == EDIT_STEPS
    (grid,) = pathlib.Path(edit_run["samples"]).glob("*-edits.png")  # inputs | result, for a person to look at
    assert not list(pathlib.Path(edit_run["samples"]).glob("*-edit.png"))  # no prompts: no text-to-image grid

    editor = TextToImage.from_checkpoint(edit_run["checkpoint"])
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
    # Each edit lands nearer its own target than the other one's: the model uses the source and the instruction.
    _nearest_own_target(edited, _stored_targets(edit_store, "edit"))
    # Swapping the sources between the instructions changes the outputs: the source image conditions the edit.
    swapped = edit([source for source, _, _ in reversed(TRIPLETS)])
    assert (swapped - edited).abs().max() > 1e-2


def test_edit_plus_memorizes(edit_run, edit_store):
    """Two input pictures per sample, one instruction: through the Edit-Plus inference path (every picture
    VAE-encoded at its own rotary frame and seen by the vision tower behind its "Picture N" marker) the pictures in
    one order give the first target and in the other order the second: the order of the sources decides the
    result."""
    from models.generation import TextToImage

    editor = TextToImage.from_checkpoint(edit_run["checkpoint"])
    edited = editor.edit_latents(
        [PLUS_INSTRUCTION] * 2,
        [sources for sources, _, _ in PLUS_TRIPLETS],
        height=RESOLUTION,
        width=RESOLUTION,
        num_steps=20,
        true_cfg_scale=1.0,
        seeds=[0, 0],
        source_area=RESOLUTION * RESOLUTION,
        vision_area=VISION_AREA,
        template="edit_plus",
    )
    targets = _stored_targets(edit_store, "edit_plus")
    _nearest_own_target(edited, targets)
    assert (edited[0] - edited[1]).abs().max() > 1e-2


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
