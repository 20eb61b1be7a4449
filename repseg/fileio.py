"""Atomic file writes: readers see the old file or the complete new one, never a part.

Checkpoints, fused models and converted weights are written to a temporary name in the
target's folder and renamed over the target (``os.replace`` is atomic on POSIX), so a
crash or Ctrl-C mid-write never leaves a truncated file behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Union

import torch

PathLike = Union[str, os.PathLike]


def write_atomically(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path``; clean up on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomically(path: PathLike, data: bytes) -> None:
    """Atomically write ``data``, synced to disk before the rename."""
    def write(tmp: str) -> None:
        with open(tmp, 'wb') as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

    write_atomically(path, write)


def write_text_atomically(path: PathLike, text: str, encoding: str = 'utf-8') -> None:
    write_bytes_atomically(path, text.encode(encoding))


def save_atomically(obj: Any, path: PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))
