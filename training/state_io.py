"""Saving training state without pickle: tensors in safetensors, everything else in JSON.

An optimizer or LR-scheduler ``state_dict`` is a nest of dicts and lists holding tensors and plain values. It is
flattened into ``{path: tensor}`` for safetensors and a JSON skeleton in which each tensor is replaced by its path;
loading reverses that. Random-number-generator states are byte tensors, so they travel the same way.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {_TENSOR: path}
    if isinstance(value, dict):
        if not all(isinstance(key, str | int) for key in value):
            raise TypeError(f"state at {path!r} has keys that are not str or int")
        return {"__dict__": [[key, _flatten(item, f"{path}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, list | tuple):
        items = [_flatten(item, f"{path}.{index}", tensors) for index, item in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"state at {path!r} holds a {type(value).__name__}, which is neither a tensor nor a plain value")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if "__dict__" in value:
            return {key: _unflatten(item, tensors) for key, item in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_unflatten(item, tensors) for item in value["__tuple__"])
    if isinstance(value, list):
        return [_unflatten(item, tensors) for item in value]
    return value


def save_state(state: dict[str, Any], folder: str | pathlib.Path, name: str) -> None:
    """Write ``<name>.safetensors`` and ``<name>.json`` under ``folder``."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, name, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def load_state(folder: str | pathlib.Path, name: str) -> dict[str, Any]:
    folder = pathlib.Path(folder)
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _unflatten(json.loads((folder / f"{name}.json").read_text()), tensors)
