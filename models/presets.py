"""Model presets: ``tiny`` (random weights, real architectures), ``nano`` (the same classes sized for the shape scenes,
with a VAE trained by this project and shipped in ``models/weights/nano_vae``) and ``qwen-image`` (published weights,
local folder).

Every role builds its models here. ``build_components("tiny")`` gives random-weight versions of the three published
classes (``QwenImageTransformer2DModel``, ``AutoencoderKLQwenImage``, ``Qwen2_5_VLForConditionalGeneration``) small
enough for a CPU test, with the real Qwen2 vocabulary. ``build_components("qwen-image", weights_dir=...)`` loads the
same classes from a diffusers-layout folder (``transformer/ vae/ text_encoder/ tokenizer/ scheduler/``); any preset
given a ``weights_dir`` loads from it, which is how a trained checkpoint is opened. Nothing is ever downloaded.

Roles ask only for the parts they use: consumers train the transformer from stored latents and never load the
condition encoder or the VAE (``parts=("transformer", "scheduler")``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import pathlib
from collections.abc import Iterable, Iterator

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from models.tokenizer import QWEN_VOCAB_SIZE, build_qwen2_tokenizer

ALL_PARTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
PRESETS: tuple[str, ...] = ("tiny", "nano", "qwen-image")
# Presets whose parts are built here (random weights, or small weights shipped in the repository), no folder needed.
BUILT_PRESETS: tuple[str, ...] = ("tiny", "nano")
NANO_VAE_FOLDER = pathlib.Path(__file__).resolve().parent / "weights" / "nano_vae"
NANO_VAE_ENV = "QWEN_IMAGE_NANO_VAE"  # another folder for the nano VAE (one's own run of jobs/train_vae.py)


def nano_vae_folder() -> pathlib.Path:
    """Where the nano preset's VAE is read from: ``$QWEN_IMAGE_NANO_VAE`` when set, else the shipped weights."""
    override = os.environ.get(NANO_VAE_ENV)
    return pathlib.Path(override) if override else NANO_VAE_FOLDER


# scheduler/scheduler_config.json of the released Qwen-Image (docs/qwen_image.md §7).
QWEN_IMAGE_SCHEDULER_CONFIG: dict = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# The published MMDiT (docs/qwen_image.md §6); kept for reference and for building an empty model on a meta device.
QWEN_IMAGE_TRANSFORMER_CONFIG: dict = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}

# The published condition encoder (Qwen2.5-VL-7B-Instruct's architecture, text_encoder/config.json of the released
# folder), for counting its memory on the meta device without the weights. Its lm_head (152064 x 3584, 545M
# parameters) is never used for conditions (``drop_lm_head``).
QWEN_IMAGE_TEXT_ENCODER_CONFIG: dict = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "window_size": 112,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}
# The published VAE is AutoencoderKLQwenImage's defaults (base_dim 96, dim_mult 1-2-4-4, two res blocks per level).
QWEN_IMAGE_VAE_CONFIG: dict = {}

# tiny: 2 layers, 4 heads of 32, text dim 64 -> about 1.3M parameters; rope axes (8, 12, 12) sum to the head dim.
TINY_TRANSFORMER_CONFIG: dict = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 12, 12),
}

# mid: the tiny transformer's shape at 4 blocks of hidden 512 (8 heads of 64), about 38M parameters (151 MB in fp32):
# large enough that memory and parallelism measurements on a CPU are about the model, not the interpreter.
MID_TRANSFORMER_CONFIG: dict = {
    **TINY_TRANSFORMER_CONFIG,
    "num_layers": 4,
    "num_attention_heads": 8,
    "attention_head_dim": 64,
    "joint_attention_dim": 512,
    "axes_dims_rope": (16, 24, 24),
}

# tiny VAE: the Wan-2.1 architecture (8x spatial compression, 16 channels) at base_dim 32, one res block per level.
TINY_VAE_CONFIG: dict = {"base_dim": 32, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1}

# nano VAE: the same architecture at base_dim 16 (2.6M parameters), trained from scratch on shape scenes by
# jobs/train_vae.py and shipped in models/weights/nano_vae (docs/nano.md); these are its constructor arguments.
NANO_VAE_CONFIG: dict = {"base_dim": 16, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1}

# nano transformer: 4 blocks of hidden 256 (4 heads of 64), text dim 64 (the tiny condition encoder's), about 7M
# parameters: sized for 64-128 px shape scenes (16-64 image tokens), trained from scratch by the demo.
NANO_TRANSFORMER_CONFIG: dict = {
    **TINY_TRANSFORMER_CONFIG,
    "num_layers": 4,
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "axes_dims_rope": (16, 24, 24),
}

# tiny condition encoder: a 2-layer Qwen2.5-VL with hidden 64 and the real 151936-row vocabulary.
TINY_TEXT_ENCODER_CONFIG: dict = {
    "text_config": {
        "vocab_size": QWEN_VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
    },
    "vision_config": {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [0],
        "window_size": 112,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}


@contextlib.contextmanager
def quiet_transformers_progress() -> Iterator[None]:
    """Without transformers' progress bars ("Loading weights", "Writing model shards"): noise in a job's output."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


class _NoLanguageModelHead(torch.nn.Module):
    """Stands in for Qwen2.5-VL's ``lm_head`` in a condition encoder: only hidden states are used, and the head is
    545M parameters (1.1 GB in bf16) of the 7B model. Anything that asks for logits fails here, loudly."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "this Qwen2.5-VL was loaded as a condition encoder, without its language-model head "
            "(build_components(..., lm_head=False)); load it with lm_head=True to generate text"
        )


def drop_lm_head(text_encoder: Qwen2_5_VLForConditionalGeneration) -> None:
    """Replace the language-model head by a module without weights (before the model is moved to a GPU, the GPU
    never holds it; tied embeddings stay with the input embedding)."""
    text_encoder.lm_head = _NoLanguageModelHead()


class MissingWeightsError(ValueError):
    """A weights folder lacks parts a preset needs; the message names every missing part."""


@dataclasses.dataclass
class Components:
    """The modules of one model. Parts a role did not ask for are None."""

    preset: str
    transformer: QwenImageTransformer2DModel | None = None
    vae: AutoencoderKLQwenImage | None = None
    text_encoder: Qwen2_5_VLForConditionalGeneration | None = None
    tokenizer: Qwen2Tokenizer | None = None
    scheduler: FlowMatchEulerDiscreteScheduler | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Components:
        for name in ("transformer", "vae", "text_encoder"):
            module = getattr(self, name)
            if module is None:
                continue
            if device is not None:
                module.to(device=device)
            if dtype is not None and module.dtype != dtype:
                module.to(dtype=dtype)
        return self

    def diffusers_pipeline(self):
        """``diffusers.QwenImagePipeline`` over these very modules (parity tests, benchmarks), progress bar off."""
        return self._diffusers("QwenImagePipeline")

    def diffusers_edit_pipeline(self):
        """``diffusers.QwenImageEditPipeline`` over these very modules (parity tests), progress bar off."""
        return self._diffusers("QwenImageEditPipeline", processor=True)

    def diffusers_edit_plus_pipeline(self):
        """``diffusers.QwenImageEditPlusPipeline`` (several reference images) over these very modules."""
        return self._diffusers("QwenImageEditPlusPipeline", processor=True)

    def diffusers_img2img_pipeline(self):
        """``diffusers.QwenImageImg2ImgPipeline`` over these very modules."""
        return self._diffusers("QwenImageImg2ImgPipeline")

    def diffusers_inpaint_pipeline(self):
        """``diffusers.QwenImageInpaintPipeline`` over these very modules."""
        return self._diffusers("QwenImageInpaintPipeline")

    def diffusers_edit_inpaint_pipeline(self):
        """``diffusers.QwenImageEditInpaintPipeline`` over these very modules."""
        return self._diffusers("QwenImageEditInpaintPipeline", processor=True)

    def _diffusers(self, name: str, *, processor: bool = False):
        import diffusers

        from models.condition_encoder import build_vl_processor

        self.require(*ALL_PARTS)
        extra = {"processor": build_vl_processor(self.tokenizer)} if processor else {}
        pipe = getattr(diffusers, name)(
            scheduler=self.scheduler,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            transformer=self.transformer,
            **extra,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def require(self, *names: str) -> None:
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(f"this operation needs model parts {missing}, which were not loaded (parts=...)")


def _check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    parts = tuple(parts)
    unknown = sorted(set(parts) - set(ALL_PARTS))
    if unknown:
        raise ValueError(f"unknown model parts {unknown}; choose from {list(ALL_PARTS)}")
    return parts


def build_components(
    preset: str = "tiny",
    *,
    weights_dir: str | pathlib.Path | None = None,
    parts: Iterable[str] = ALL_PARTS,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    lm_head: bool = True,
) -> Components:
    """Build (``tiny``) or load (any preset with ``weights_dir``) the requested parts of a model.

    ``lm_head=False``: the text encoder comes without its language-model head (``drop_lm_head``), as the condition
    encoder needs it; a captioner, which generates text, keeps it."""
    parts = _check_parts(parts)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    if weights_dir is not None:
        components = load_components(weights_dir, parts=parts, dtype=dtype, preset=preset)
    elif preset not in BUILT_PRESETS:
        raise MissingWeightsError(
            "preset 'qwen-image' loads the published weights from a local folder: pass weights_dir=<folder> holding "
            f"{', '.join(p + '/' for p in ALL_PARTS)} (the diffusers layout of Qwen/Qwen-Image); nothing is downloaded"
        )
    else:
        components = _build(preset, parts, seed)
    if not lm_head and components.text_encoder is not None:
        drop_lm_head(components.text_encoder)
    return components.to(device=device, dtype=dtype)


def vae_config(preset: str, weights_dir: str | pathlib.Path | None = None) -> dict:
    """The config (latent normalisation included) of the VAE that ``build_components(preset, weights_dir)`` gives,
    without its weights: the folder's ``vae/config.json``, the shipped nano VAE's, or the tiny preset's, completed
    with the class's defaults for what a file leaves out (the model is built on the meta device)."""
    import json

    if weights_dir is not None:
        path = pathlib.Path(weights_dir) / "vae" / "config.json"
        if not path.is_file():
            raise MissingWeightsError(f"weights_dir {weights_dir} has no VAE (no {path})")
        saved = json.loads(path.read_text())
    elif preset == "nano":
        saved = json.loads((nano_vae_folder() / "config.json").read_text())
    elif preset in BUILT_PRESETS:
        saved = dict(TINY_VAE_CONFIG)
    else:
        raise MissingWeightsError(f"preset {preset!r} reads its VAE from a folder: pass weights_dir")
    with torch.device("meta"):
        config = AutoencoderKLQwenImage.from_config(saved).config
    return {key: value for key, value in config.items() if not key.startswith("_")}


def transformer_config(preset: str) -> dict:
    """The transformer shape of a built preset."""
    return dict(NANO_TRANSFORMER_CONFIG if preset == "nano" else TINY_TRANSFORMER_CONFIG)


def _build(preset: str, parts: tuple[str, ...], seed: int) -> Components:
    """tiny: every part random (seeded). nano: the transformer random (seeded) at its own size, the shipped trained
    VAE, and the tiny condition encoder (a fixed-seed random Qwen2.5-VL: its hidden states still tell tokens apart)."""
    components = Components(preset=preset)
    # Each part gets its own seed so that asking for fewer parts does not change the weights of the others.
    if "transformer" in parts:
        torch.manual_seed(seed)
        components.transformer = QwenImageTransformer2DModel(**transformer_config(preset))
    if "vae" in parts and preset == "nano":
        folder = nano_vae_folder()
        if not (folder / "config.json").is_file():
            raise MissingWeightsError(
                f"the nano VAE is not in {folder}: train and ship it with "
                "python jobs/train_vae.py --config configs/train_vae_nano.yaml --ship"
            )
        components.vae = AutoencoderKLQwenImage.from_pretrained(folder, torch_dtype=torch.float32)
    elif "vae" in parts:
        torch.manual_seed(seed + 1)
        components.vae = AutoencoderKLQwenImage(**TINY_VAE_CONFIG)
    if "text_encoder" in parts:
        torch.manual_seed(seed + 2)
        config = Qwen2_5_VLConfig(**copy.deepcopy(TINY_TEXT_ENCODER_CONFIG))
        components.text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    if "tokenizer" in parts:
        components.tokenizer = build_qwen2_tokenizer()
    if "scheduler" in parts:
        components.scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG)
    for module in (components.transformer, components.vae, components.text_encoder):
        if module is not None:
            module.eval().requires_grad_(False)
    return components


def _has_weights(folder: pathlib.Path) -> bool:
    return any(folder.glob("*.safetensors"))


def _missing_shards(folder: pathlib.Path, part: str) -> list[str]:
    """The files a sharded part's index lists that are not there (a download or copy that stopped half-way)."""
    import json

    missing = []
    for index in folder.glob("*.safetensors.index.json"):
        try:
            files = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError) as error:
            missing.append(f"{part}/{index.name} (unreadable: {type(error).__name__})")
            continue
        missing += [
            f"{part}/{name} (listed in {index.name})" for name in sorted(files) if not (folder / name).is_file()
        ]
    return missing


def missing_parts(weights_dir: str | pathlib.Path, parts: Iterable[str] = ALL_PARTS) -> list[str]:
    """What ``weights_dir`` lacks for ``parts``, one readable line each; empty when it is complete."""
    root = pathlib.Path(weights_dir)
    if not root.is_dir():
        return [f"{root} (the folder itself does not exist)"]
    missing = []
    for part in _check_parts(parts):
        folder = root / part
        if not folder.is_dir():
            missing.append(f"{part}/ (folder)")
        elif part in ("transformer", "vae", "text_encoder"):
            if not (folder / "config.json").is_file():
                missing.append(f"{part}/config.json")
            if not _has_weights(folder):
                missing.append(f"{part}/*.safetensors (weights)")
            missing += _missing_shards(folder, part)
        elif part == "tokenizer":
            if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
                missing.append("tokenizer/tokenizer.json (or vocab.json + merges.txt)")
        elif part == "scheduler" and not (folder / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
    return missing


def load_components(
    weights_dir: str | pathlib.Path,
    *,
    parts: Iterable[str] = ALL_PARTS,
    dtype: torch.dtype = torch.float32,
    preset: str = "qwen-image",
) -> Components:
    """Load the requested parts from a local diffusers-layout folder, offline. Raises ``MissingWeightsError``."""
    parts = _check_parts(parts)
    root = pathlib.Path(weights_dir)
    missing = missing_parts(root, parts)
    if missing:
        raise MissingWeightsError(
            f"weights folder {root} is incomplete for parts {list(parts)}; missing: {', '.join(missing)}"
        )
    components = Components(preset=preset)
    local = {"local_files_only": True}
    if "transformer" in parts:
        components.transformer = QwenImageTransformer2DModel.from_pretrained(
            root / "transformer", torch_dtype=dtype, **local
        )
    if "vae" in parts:
        components.vae = AutoencoderKLQwenImage.from_pretrained(root / "vae", torch_dtype=dtype, **local)
    if "text_encoder" in parts:
        with quiet_transformers_progress():
            components.text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                root / "text_encoder", dtype=dtype, **local
            )
    if "tokenizer" in parts:
        components.tokenizer = Qwen2Tokenizer.from_pretrained(root / "tokenizer", **local)
    if "scheduler" in parts:
        components.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler", **local)
    for module in (components.transformer, components.vae, components.text_encoder):
        if module is not None:
            module.eval().requires_grad_(False)
    return components
