"""The latent store's header, ``<store>/_store.json``: what made its rows.

Latents are stored normalised by one VAE's per-channel mean and standard deviation, text embeddings come from one
condition encoder through one prompt template, edit rows saw their input image at one vision area. A reader given
rows made otherwise would train or sample on numbers that mean something else, without an error. So the first
writer records these settings, every later writer must bring the same ones (``ensure_header``), and consumers check
the ones they depend on (``check_header``). A store written before the header existed has none and is read as it
is.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from models.files import create_once

HEADER_FILE = "_store.json"
# The area (pixels) at which the vision tower sees an edit's input image when nothing says otherwise (384 x 384).
# A store records the one its edit rows were encoded at; a model trained on it records it in its checkpoint's
# metadata under the same key, and serving takes it from there.
EDIT_VISION_AREA = "edit_vision_area"
DEFAULT_EDIT_VISION_AREA = 384 * 384
FORMAT_VERSION = 1
# Bytes hashed at each end of a weights file: enough to tell two checkpoints apart (their headers list tensor
# shapes and offsets, their first and last tensors differ), without reading 16 GB of text encoder at every job.
FINGERPRINT_EDGE_BYTES = 1 << 20


class StoreHeaderMismatch(ValueError):
    """A writer or reader whose settings differ from the store's header."""


def resolve_edit_vision_area(given: int | None, recorded: int | None, key: str, where: str) -> int:
    """The edit vision area a trainer or server uses: the one its data recorded (``where``: the store's header, a
    checkpoint's metadata), else the default; a ``given`` one (config ``key``) must equal the recorded one."""
    if given is None:
        return recorded or DEFAULT_EDIT_VISION_AREA
    if recorded is not None and given != recorded:
        raise StoreHeaderMismatch(
            f"{key} is {given}, but {where} at {recorded} pixels; leave {key} unset to take that one"
        )
    return given


def read_header(store_dir: str | pathlib.Path) -> dict | None:
    path = pathlib.Path(store_dir) / HEADER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def weights_fingerprint(folders: list[pathlib.Path]) -> str:
    """A hash of the weight and config files under ``folders``: names, sizes, and the first and last MiB of each."""
    digest = hashlib.blake2b(digest_size=12)
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")):
            size = path.stat().st_size
            digest.update(f"{path.relative_to(folder)}\0{size}\0".encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(FINGERPRINT_EDGE_BYTES))
                if size > 2 * FINGERPRINT_EDGE_BYTES:
                    handle.seek(size - FINGERPRINT_EDGE_BYTES)
                    digest.update(handle.read())
    return digest.hexdigest()


def differences(recorded: dict, given: dict) -> list[str]:
    """``key: store has X, given Y`` for every key of ``given`` whose value differs from the recorded one."""
    return [
        f"{key}: the store has {recorded.get(key)!r}, given {value!r}"
        for key, value in given.items()
        if recorded.get(key) != value
    ]


def ensure_header(store_dir: str | pathlib.Path, header: dict) -> dict:
    """Write ``header`` if the store has none; otherwise require it to equal the store's. Returns the store's.

    Writers starting at once race safely (``create_once``): one header is written, the others compare with it."""
    store = pathlib.Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    header = {"format_version": FORMAT_VERSION, **header}
    path = store / HEADER_FILE
    create_once(path, json.dumps(header, indent=2, sort_keys=True))
    recorded = json.loads(path.read_text())
    mismatches = differences(recorded, header) + [
        f"{key}: the store has {value!r}, given nothing" for key, value in recorded.items() if key not in header
    ]
    if mismatches:
        raise StoreHeaderMismatch(
            f"the latent store {store} was written with other settings; appending would mix them "
            f"({'; '.join(mismatches)}). Write to a new store, or encode with the store's settings."
        )
    return recorded


def check_header(store_dir: str | pathlib.Path, expected: dict, reader: str) -> dict | None:
    """For consumers: the store's header must agree with ``expected`` on every key given (a store without a header
    passes). ``reader`` names who reads, for the message."""
    recorded = read_header(store_dir)
    if recorded is None:
        return None
    mismatches = differences(recorded, expected)
    if mismatches:
        raise StoreHeaderMismatch(
            f"{reader} does not match the latent store {store_dir} ({'; '.join(mismatches)}): its rows were encoded "
            "for another model"
        )
    return recorded
