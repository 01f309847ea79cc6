"""CLIP-family image-text embeddings with open_clip, offline.

Used by the producers (image-text alignment, NSFW and aesthetic heads), the evaluation (CLIP score) and RL rewards.
``tiny-clip`` is a randomly initialised small ViT / text transformer for tests (real architecture and the real CLIP
BPE vocabulary that open_clip ships); any other open_clip model name needs ``weights_path``, a local weights file
(open_clip's ``pretrained=<file>``). Nothing is downloaded.

torch and open_clip are imported when a model is built: the modules that only read a ``ClipConfig`` (every curation
and evaluation config, their Ray tasks and actors) do not pay for them.
"""

from __future__ import annotations

import functools
import pathlib
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from models.config import StrictModel

if TYPE_CHECKING:
    import torch

TINY_CLIP = "tiny-clip"
_CONFIG_DIR = pathlib.Path(__file__).parent / "clip_configs"


@functools.cache
def _open_clip():
    """open_clip with the project's model configs registered (``tiny-clip``), imported on first use (4 s of CPU), so
    that modules which only read CLIP configs (every curation driver and its tasks) do not pay for it."""
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)
    return open_clip


class ClipConfig(StrictModel):
    model_name: str = TINY_CLIP
    weights_path: str | None = None
    seed: int = 0  # initialises tiny-clip


class ClipModel:
    """An open_clip model with its preprocessing and tokenizer; embeddings are L2-normalised."""

    def __init__(self, config: ClipConfig, device: str | torch.device = "cpu"):
        import torch

        open_clip = _open_clip()
        if config.model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {config.model_name!r}; see open_clip.list_models()")
        if config.weights_path is None and config.model_name != TINY_CLIP:
            raise ValueError(
                f"CLIP model {config.model_name!r} needs weights_path: a local weights file "
                "(open_clip pretrained checkpoint); nothing is downloaded"
            )
        if config.weights_path is not None and not pathlib.Path(config.weights_path).is_file():
            raise ValueError(f"CLIP weights_path {config.weights_path} does not exist")
        torch.manual_seed(config.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            config.model_name, pretrained=config.weights_path, device=device
        )
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(config.model_name)
        self.device = torch.device(device)

    @property
    def embed_dim(self) -> int:
        return self.model.text_projection.shape[1] if hasattr(self.model, "text_projection") else self.model.embed_dim

    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` RGB images -> ``[N, D]`` unit vectors (float32, CPU)."""
        import torch

        if not images:
            return torch.zeros(0, self.embed_dim)
        pixels = torch.stack([self.preprocess(Image.fromarray(image)) for image in images]).to(self.device)
        with torch.no_grad():
            return torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1).cpu()

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts -> ``[N, D]`` unit vectors (float32, CPU); texts past the context length are truncated."""
        import torch

        if not texts:
            return torch.zeros(0, self.embed_dim)
        tokens = self.tokenizer(texts).to(self.device)
        with torch.no_grad():
            return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    def similarity(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """Cosine similarity of each image with its own text, ``[N]`` in [-1, 1]."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} texts")
        return (self.encode_images(images) * self.encode_texts(texts)).sum(dim=-1).numpy()
