"""How repseg writes files: atomically, and never over existing outputs by surprise.

Checkpoints, fused models and converted weights are written to a temporary name in the
target's folder and renamed over the target (``os.replace`` is atomic on POSIX), so a
crash, Ctrl-C or SIGTERM mid-write never leaves a truncated file behind (nor the
temporary file).

Every tool that writes files the user names (``convert.py DST``, ``deploy.py OUT_DIR``,
``export_onnx.py OUT``, ``infer.py --out-dir``, ``test.py --out``, ``benchmark.py --json``,
``make_toy_cityscapes.py``) follows one rule,
:func:`claim_outputs`: existing outputs are refused, listed, unless ``--force`` (then one
line says which are replaced); an output that is one of the tool's inputs is refused even
with ``--force`` (:func:`refuse_input_as_output`); and an output below a file instead of a
folder is refused before any work (:func:`check_output_location`).
"""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from mmengine.logging import print_log

from .errors import OutputExistsError, UserError, first_few

PathLike = Union[str, os.PathLike]
#: Existing outputs named in a refusal or a "replacing" line; the rest are counted.
SHOWN_OUTPUTS = 5


class OutputLocationError(UserError, NotADirectoryError):
    """An output path that cannot be created: a file stands where a folder must be."""


def check_output_location(path: PathLike, is_folder: bool, what: str = 'output') -> Path:
    """Refuse an output path that cannot be created, before any work is done.

    ``path`` is a folder to create (``is_folder``) or a file to write. Raises
    :class:`OutputLocationError` when a file stands at ``path`` (for a folder) or a
    folder stands there (for a file), or when a parent of ``path`` is a file. Returns
    ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != is_folder:
        found, wanted = ('a folder', 'a file') if path.is_dir() else ('a file', 'a folder')
        raise OutputLocationError(f"{what} '{path}' is {found}, but the tool writes {wanted} "
                                  'there; give another path')
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputLocationError(
                    f"{what} '{path}' cannot be created: '{parent}' is a file, not a "
                    'folder; give a path below a folder (or move the file away)')
            break
    return path


def same_file(first: PathLike, second: PathLike) -> bool:
    """Whether two paths name one file: through symlinks, ``..``, hard links."""
    first, second = Path(first), Path(second)
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def refuse_input_as_output(inputs: dict, output: PathLike) -> None:
    """Refuse to write ``output`` over one of the tool's inputs (``{'SRC': path}``),
    whatever ``--force`` says: the input would be lost."""
    for name, path in inputs.items():
        if path is not None and same_file(path, output):
            raise OutputExistsError(
                f"the output '{output}' is the {name} '{path}' itself; writing it would "
                f'replace the {name}. Write to another path (--force does not allow this)')


def _listing(paths: list) -> str:
    return first_few(paths, SHOWN_OUTPUTS)


def claim_outputs(paths: Iterable[PathLike], force: bool, where: str = 'another path') -> list:
    """The overwrite rule of every tool: refuse to replace existing outputs unless ``force``.

    Args:
        paths: every file the tool is about to write.
        force: the tool's ``--force`` (``force=True`` in Python).
        where: what to change instead, for the message (e.g. 'another --out-dir').

    Returns:
        The outputs that exist and will be replaced (logged in one line when ``force``).

    Raises:
        OutputExistsError: some outputs exist and ``force`` is false; the message lists
            them.
    """
    existing = [Path(p) for p in paths if Path(p).exists()]
    if not existing:
        return []
    several = len(existing) > 1
    count = f"{len(existing)} output{'s' if several else ''}"
    if not force:
        them = 'them' if several else 'it'
        raise OutputExistsError(
            f"{count} already exist{'' if several else 's'}: {_listing(existing)}. Nothing "
            f'was written. Pass --force (force=True in Python) to replace {them}, or choose '
            f'{where}')
    print_log(f'--force: replacing {count}: {_listing(existing)}', logger='current')
    return existing


def _raise_terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a scheduler's stop) raises ``SystemExit(143)``
    as Ctrl-C raises ``KeyboardInterrupt``, so ``finally`` clauses run: by default the
    process would die at once and leave a half-written temporary file for good. Only the
    main thread can set a handler; elsewhere the block runs as it is."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_atomically(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path``; clean up on failure,
    Ctrl-C and SIGTERM."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with _sigterm_as_exit():
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
