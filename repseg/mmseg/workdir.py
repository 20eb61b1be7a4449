"""A training's work dir: one training in it at a time, and ``--resume`` checked first.

* :func:`work_dir_lock`: two trainings in one work dir would interleave their
  checkpoints and move ``last_checkpoint`` back and forth. A lock file holding the
  process id, host and process start time refuses the second; a lock left by a run that
  died is taken over with a log line, so a crash never locks a work dir for good. The
  start time tells a dead run whose process id the system has given to another process
  (common in containers, where ids are few and restart from 1) from the run itself; where
  there is no ``/proc`` to read it, a live process id is taken to be the run.
* :func:`check_resume`: mmengine resumes from the file ``last_checkpoint`` names and
  fails with a torch traceback when it is truncated or when the config's model has
  changed shape since (after size-mismatch warnings of its loose load), and says only
  "can not be found" when the file is gone. Here the checkpoint is read and compared
  with the model first; the message says what was found, which checkpoints survive,
  and how to resume from the newest intact one.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from mmengine.config import Config
from mmengine.logging import print_log

from ..checkpoint import CheckpointError
from ..checkpoint.loader import describe_mismatch, key_mismatch
from ..errors import UserError
from .builder import plain_bn, read_segmentor_checkpoint, segmentor_of
from .hooks import POINTER_FILE

#: The lock file in a work dir while a training runs there: ``<pid> <host> <start>``
#: (``<start>``: the process start time of :func:`_start_time`; left out where it cannot
#: be read, and in the lock files of older versions).
LOCK_FILE = 'train.lock'
#: Where Linux tells a process's start time (``<PROC>/<pid>/stat``).
PROC = Path('/proc')
#: A lock file without a readable holder younger than this may be one being written.
UNREADABLE_LOCK_GRACE_S = 60.0


class WorkDirBusyError(UserError, RuntimeError):
    """Another training runs in the work dir."""


class ResumeError(UserError, ValueError):
    """``--resume`` cannot continue from what the work dir holds."""


#: Who holds a lock: process id, host, start time (None: not known).
Holder = tuple[int, str, Optional[int]]


def _start_time(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks after boot: field 22 of
    ``/proc/<pid>/stat``), or None without ``/proc`` or such a process. A reused process
    id has another start time."""
    try:
        stat = (PROC / str(pid) / 'stat').read_text()
        # the command name (field 2, in parentheses) may hold spaces and ')'
        return int(stat[stat.rindex(')') + 1:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _holder(path: Path) -> Optional[Holder]:
    try:
        fields = path.read_text().split()
        if len(fields) == 2:  # written by an older version: no start time
            return int(fields[0]), fields[1], None
        pid, host, start = fields
        return int(pid), host, int(start)
    except (OSError, ValueError):
        return None


def _lock_text(holder: Holder) -> str:
    pid, host, start = holder
    return f'{pid} {host}\n' if start is None else f'{pid} {host} {start}\n'


def _reused(pid: int, start: Optional[int]) -> bool:
    """Whether the live process ``pid`` is not the one that started at ``start`` (False
    where either start time is unknown: an old lock file, no ``/proc``)."""
    now = _start_time(pid)
    return start is not None and now is not None and now != start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_main_rank() -> bool:
    return int(os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0'))) == 0


@contextlib.contextmanager
def work_dir_lock(work_dir) -> Iterator[None]:
    """Hold ``<work_dir>/train.lock`` while the block runs (on rank 0 of a distributed
    run; the other ranks share its work dir). Raises :class:`WorkDirBusyError` naming
    the process that holds it."""
    if not _is_main_rank():
        yield
        return
    path = Path(work_dir) / LOCK_FILE
    me = (os.getpid(), socket.gethostname(), _start_time(os.getpid()))
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            _take_over_if_stale(path, me[1])
    with os.fdopen(fd, 'w') as file:
        file.write(_lock_text(me))
    try:
        yield
    finally:
        if _holder(path) == me:
            path.unlink()


def _take_over_if_stale(path: Path, host: str) -> None:
    """Remove the lock at ``path`` if the run holding it is gone (its process id is
    free, or now names a process started at another time); else refuse."""
    holder = _holder(path)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return  # released meanwhile: try again
    work_dir = path.parent
    gone = 'which no longer runs'
    if holder is None and age < UNREADABLE_LOCK_GRACE_S:
        holder_text, stale = 'a process starting up', False
    elif holder is None:
        holder_text, stale = 'nothing readable', True
    else:
        pid, where, start = holder
        holder_text = f'process {pid} on {where}'
        stale = where == host and not _alive(pid)
        if where == host and not stale and _reused(pid, start):
            stale = True
            gone += ' (its process id now names another process, started since)'
        if where != host:
            raise WorkDirBusyError(
                f"work dir '{work_dir}' is in use by a training on another machine "
                f'({holder_text}, lock file {path}). Wait for it to end, or give another '
                f'--work-dir; if no training runs there any more, delete {path}')
    if not stale:
        raise WorkDirBusyError(
            f"work dir '{work_dir}' is in use by another training ({holder_text}; lock "
            f'file {path}): two runs would interleave their checkpoints. Wait for it to '
            'end (or stop it), or give another --work-dir')
    print_log(f'work dir lock {path} was left by {holder_text}, {gone}: taking it over',
              logger='current')
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _step(path: Path) -> int:
    found = re.search(r'(\d+)', path.stem)
    return int(found.group(1)) if found else -1


def _newest_intact(work_dir: Path, broken: Path) -> tuple[list[Path], Optional[Path]]:
    """The checkpoints in ``work_dir`` other than ``broken`` (oldest first), and the
    newest of them that reads as a checkpoint."""
    survivors = sorted((p for p in work_dir.glob('*.pth') if p.is_file() and p != broken),
                       key=_step)
    for candidate in reversed(survivors):
        try:
            read_segmentor_checkpoint(candidate)
            return survivors, candidate
        except CheckpointError:
            continue
    return survivors, None


def _what_survives(work_dir: Path, broken: Path) -> str:
    survivors, intact = _newest_intact(work_dir, broken)
    if intact is None:
        listed = (f" ({', '.join(p.name for p in survivors)}: none readable)"
                  if survivors else '')
        return (f'No intact checkpoint survives in {work_dir}{listed}: train without '
                '--resume (or into a new --work-dir).')
    return (f"Checkpoints that survive in {work_dir}: {', '.join(p.name for p in survivors)}; "
            f'the newest intact one is {intact.name}. Resume from it with --resume '
            f'--cfg-options load_from={intact}')


def _model_state(cfg: Config) -> dict:
    """The state dict of the model ``cfg`` builds (plain BN, no weights loaded), from the
    registry of its default scope: mmseg's segmentors, mmpretrain's classifiers."""
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope(cfg.get('default_scope') or 'mmseg')
    model_cfg = plain_bn(cfg.model)
    model_cfg.pop('pretrained', None)
    return segmentor_of(MODELS.build(model_cfg)).state_dict()


def check_resume(cfg: Config) -> None:
    """Refuse ``--resume`` (``cfg.resume``) when the checkpoint it would continue from
    (``cfg.load_from``, else the one ``last_checkpoint`` names) is gone, unreadable, or
    does not fit the model of ``cfg``; without ``last_checkpoint`` mmengine starts
    afresh, as it does."""
    work_dir = Path(cfg.work_dir)
    if cfg.get('load_from'):
        target, named = Path(cfg.load_from), f'load_from={cfg.load_from}'
    else:
        pointer = work_dir / POINTER_FILE
        if not pointer.is_file():
            return
        target = Path(pointer.read_text().strip())
        named = f'{pointer} names {target}'
    if not target.is_file():
        raise ResumeError(f'--resume: {named}, which does not exist. '
                          + _what_survives(work_dir, target))
    try:
        state, _ = read_segmentor_checkpoint(target)
    except CheckpointError as error:
        raise ResumeError(f'--resume: {named}, which cannot be read: {error}. '
                          + _what_survives(work_dir, target)) from None
    parts = describe_mismatch(*key_mismatch(state, _model_state(cfg)), limit=6)
    if parts:
        raise ResumeError(
            f"--resume: {named}, whose weights do not fit the model of the config "
            f"({'; '.join(parts)}): the config changed since the checkpoint was written. "
            'Resume with the config it was trained with (mmengine dumps it into the work '
            'dir), or train the changed model in a new --work-dir')
