"""Checkpoints in the diffusers folder layout, safetensors only (never pickle).

A full checkpoint is the folder ``QwenImagePipeline.from_pretrained`` opens: ``model_index.json`` plus
``transformer/ vae/ text_encoder/ tokenizer/ scheduler/``. A partial one (a consumer saves only the transformer it
trains) has the same sub-folders for the parts it holds. Folders are written under a temporary name and renamed into
place, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import diffusers

from models.presets import ALL_PARTS, Components, build_components, quiet_transformers_progress
from store.header import EDIT_VISION_AREA

MODEL_INDEX = {
    "_class_name": "QwenImagePipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
}
# Our own metadata rides in model_index.json under an underscore key, which diffusers ignores.
METADATA_KEY = "_qwen_image_ray"


@contextlib.contextmanager
def staged_folder(folder: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary folder beside ``folder`` to write into; renamed into place (replacing ``folder``) when the block
    ends, removed when it raises, so a reader never sees half a checkpoint."""
    folder = pathlib.Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is read by other users and services
    try:
        yield staging
        replace_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_index(folder: pathlib.Path, preset: str, parts: list[str], metadata: dict | None = None) -> None:
    """``model_index.json`` naming ``parts`` (diffusers reads it), with our metadata under ``METADATA_KEY``."""
    index = {key: value for key, value in MODEL_INDEX.items() if key.startswith("_") or key in parts}
    index["_diffusers_version"] = diffusers.__version__
    index[METADATA_KEY] = {"preset": preset, "parts": parts, **(metadata or {})}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_components(
    folder: str | pathlib.Path, components: Components, *, metadata: dict | None = None
) -> pathlib.Path:
    """Write every part ``components`` holds into ``folder`` (replacing it); returns the folder."""
    with staged_folder(folder) as staging:
        saved = []
        for part in ALL_PARTS:
            module = getattr(components, part)
            if module is None:
                continue
            kwargs = {"safe_serialization": True} if part in ("transformer", "vae", "text_encoder") else {}
            with quiet_transformers_progress():  # its "Writing model shards" bar is noise in a job's output
                module.save_pretrained(staging / part, **kwargs)
            saved.append(part)
        write_model_index(staging, components.preset, saved, metadata)
    return pathlib.Path(folder)


def replace_dir(source: pathlib.Path, target: pathlib.Path) -> None:
    if target.exists():
        retired = target.with_name(f".{target.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
        os.replace(source, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(source, target)


def read_metadata(folder: str | pathlib.Path) -> dict:
    """Our metadata from ``model_index.json`` (empty when the folder was not written by us)."""
    index_path = pathlib.Path(folder) / "model_index.json"
    if not index_path.is_file():
        return {}
    return json.loads(index_path.read_text()).get(METADATA_KEY, {})


def trained_edit_vision_area(folder: str | pathlib.Path | None) -> int | None:
    """The vision area (pixels) of the edits a checkpoint (or a finished run's final export) was trained on, as its
    metadata records it from the latent store's header; None for a folder without one."""
    if folder is None or not pathlib.Path(folder).exists():
        return None
    area = read_metadata(follow_run(folder)).get(EDIT_VISION_AREA)
    return int(area) if area is not None else None


def load_checkpoint(folder: str | pathlib.Path, *, parts=ALL_PARTS, **kwargs) -> Components:
    """Open a checkpoint folder (ours or a released one) with the preset recorded in it."""
    preset = read_metadata(folder).get("preset", "qwen-image")
    return build_components(preset, weights_dir=folder, parts=parts, **kwargs)


# What each part of a pipeline folder must hold: the class named in model_index.json and in the part's config.
PART_CLASSES = {part: MODEL_INDEX[part][1] for part in ALL_PARTS}


def _part_class_problem(root: pathlib.Path, part: str) -> str | None:
    """Why the part's own config does not describe the class this stack loads (None when it does or says nothing)."""
    config_path = root / part / "config.json"
    if part not in ("transformer", "vae", "text_encoder") or not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        return f"{part}/config.json is not JSON ({error})"
    expected = PART_CLASSES[part]
    named = config.get("_class_name") or next(iter(config.get("architectures") or []), None)
    # Exports by FSDP2 workers before this was fixed name the class FSDP<class>: the same model.
    if named is not None and named not in (expected, f"FSDP{expected}"):
        return f"{part}/config.json describes {named}, not {expected}"
    return None


def check_model_folder(folder: str | pathlib.Path) -> tuple[str, tuple[str, ...]]:
    """``(preset, parts)`` of a folder a training job starts from (its ``init``): a checkpoint or export we wrote
    (our metadata lists its parts), or a diffusers pipeline folder as the published ``Qwen/Qwen-Image`` and
    ``Qwen/Qwen-Image-Edit`` repositories lay it out (``model_index.json``, each part's config and safetensors,
    sharded with an index or not, ``tokenizer/``, ``scheduler/``), which must hold every part. Anything missing or
    of another class is a ``MissingWeightsError`` naming each part concerned."""
    from models.presets import MissingWeightsError, missing_parts

    root = pathlib.Path(folder)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        problem = "does not exist" if not root.exists() else "has no model_index.json"
        raise MissingWeightsError(
            f"{root} {problem}: give a diffusers pipeline folder (model_index.json, transformer/, vae/, "
            "text_encoder/, tokenizer/, scheduler/, as Qwen/Qwen-Image is published) or a checkpoint we wrote"
        )
    try:
        index = json.loads(index_path.read_text())
    except ValueError as error:
        raise MissingWeightsError(f"{index_path} is not JSON: {error}") from None
    ours = index.get(METADATA_KEY)
    problems = []
    if ours:
        preset, parts = ours.get("preset", "qwen-image"), tuple(ours.get("parts", ALL_PARTS))
    else:
        preset, parts = "qwen-image", ALL_PARTS
        for part in ALL_PARTS:
            entry = index.get(part)
            if not entry or entry[0] is None:
                problems.append(f"{part} (not named in model_index.json)")
            elif entry[1] != PART_CLASSES[part]:
                problems.append(f"{part} (model_index.json names {entry[1]}, this stack loads {PART_CLASSES[part]})")
    problems += missing_parts(root, parts)
    problems += [problem for part in parts if (problem := _part_class_problem(root, part))]
    if problems:
        raise MissingWeightsError(
            f"model folder {root} cannot be trained from; missing or wrong: {'; '.join(problems)}"
        )
    return preset, parts


def follow_run(path: str | pathlib.Path) -> str:
    """``path`` absolute, or, for a finished run's folder, the final export its ``summary.json`` names
    (pretraining, SFT, DPO and GRPO all write one); not checked (``check_model_folder``)."""
    folder = pathlib.Path(path).resolve()
    summary = folder / "summary.json"
    if not (folder / "model_index.json").is_file() and summary.is_file():
        run = json.loads(summary.read_text())
        if not run.get("checkpoint"):
            raise ValueError(
                f"run {folder} trained a LoRA adapter ({run.get('adapter')}) and exported no merged model: start "
                f"from its base ({run.get('base')}) with the adapter, or run it again with lora.merge=true"
            )
        return follow_run(run["checkpoint"])
    return str(folder)


def resolve_init(path: str | pathlib.Path) -> str:
    """The model folder a job starts from (``follow_run``), checked (``check_model_folder``)."""
    folder = follow_run(path)
    check_model_folder(folder)
    return folder
