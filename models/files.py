"""File-system steps that several writers may take at once."""

from __future__ import annotations

import os
import pathlib
import secrets


def create_once(path: str | pathlib.Path, text: str, mode: int = 0o644) -> bool:
    """Write ``path`` with ``text`` unless it exists; True when this call wrote it. Processes racing to create it
    see it whole or not at all: each writes and syncs a file of its own beside it and links that into place, which
    fails for all but the first (``os.link`` never replaces); the losers' files are removed."""
    path = pathlib.Path(path)
    if path.exists():
        return False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
