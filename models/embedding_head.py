"""Small MLP heads over L2-normalised CLIP image embeddings (the producers' NSFW and aesthetic predictors).

Weights are a local safetensors file (``layers.{i}.weight`` / ``layers.{i}.bias``, ReLU between layers), so published
predictors can be converted once and loaded offline.
"""

from __future__ import annotations

import pathlib

import torch
from safetensors.torch import load_file, save_file


class EmbeddingHead(torch.nn.Module):
    """Linear layers with ReLU between them, over an L2-normalised embedding; one output."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        if len(sizes) < 2 or sizes[-1] != 1:
            raise ValueError(f"head sizes must run from the embedding size to 1, got {sizes}")
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        hidden = embeddings
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if index < len(self.layers) - 1:
                hidden = torch.relu(hidden)
        return hidden.squeeze(-1)

    @classmethod
    def load(cls, path: str | pathlib.Path, embed_dim: int) -> EmbeddingHead:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ValueError(f"head weights {path} do not exist")
        tensors = load_file(str(path))
        num_layers = len([key for key in tensors if key.endswith(".weight")])
        if num_layers == 0:
            raise ValueError(f"{path} holds no layers.{{i}}.weight tensors")
        sizes = [tensors["layers.0.weight"].shape[1]] + [
            tensors[f"layers.{i}.weight"].shape[0] for i in range(num_layers)
        ]
        if sizes[0] != embed_dim:
            raise ValueError(f"head {path} expects {sizes[0]}-d embeddings but the CLIP model gives {embed_dim}")
        head = cls(sizes)
        head.load_state_dict(tensors)
        return head.eval().requires_grad_(False)

    def save(self, path: str | pathlib.Path) -> None:
        save_file({key: value.contiguous() for key, value in self.state_dict().items()}, str(path))
