"""What a gpu_check run writes and works on: the output files, the step records, sizes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

#: The files of OUT_DIR (the device tool returns at most 8, each up to 16 MiB).
SUMMARY, RESULTS, PROFILE, LOGS_ARCHIVE = ('summary.md', 'results.json', 'profile.txt',
                                           'logs.tar.gz')
#: What the smoke cannot do on a CPU, said at the top of its summary.
SMOKE_NOTE = ('CPU smoke run: tiny models and inputs, no AMP (it needs CUDA), SyncBN '
              'converted to BN (no CUDA process group), no CUDA graphs or torch.compile, '
              'CUDA tests skipped. The numbers prove the code paths, not speeds.')


@dataclass(frozen=True)
class Sizes:
    """What the pipeline steps work on (the matrix has its own plan)."""

    frame: tuple  # (H, W) of the toy city frames
    train_frames: int
    val_frames: int
    first_iters: int  # training stops here, then --resume continues to total_iters
    total_iters: int
    batch: int


GPU_SIZES = Sizes(frame=(512, 1024), train_frames=16, val_frames=4, first_iters=60,
                  total_iters=100, batch=4)
SMOKE_SIZES = Sizes(frame=(64, 128), train_frames=4, val_frames=2, first_iters=2,
                    total_iters=4, batch=2)


@dataclass
class StepResult:
    """How one step went: ``status`` is ok, failed, timeout, skipped, running or pending."""

    name: str
    title: str
    status: str = 'pending'
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system time of the step's processes
    returncode: Optional[int] = None
    log: str = ''  # file name inside the logs archive
    note: str = ''  # one line for the summary
    details: dict = field(default_factory=dict)
