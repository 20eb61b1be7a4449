"""The one timing loop of repseg, with what a timing needs around it: device
synchronisation, warm-up, peak memory and the environment it ran in.

:func:`time_calls` times one call or several interleaved: every call is warmed up first,
then ``rounds`` rounds visit the calls in turn, each timing ``iters`` synchronized calls
of one of them. Plain timing is one call in one round; ``tools/benchmark.py --int8``
alternates single calls (``rounds=iters, iters=1``) so that a change in the machine's
load hits every backend alike; ``--variants`` alternates blocks of calls.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed calls (weights
included); on CPU the growth of the process's peak resident memory over its resident
memory before the calls (Linux ``VmHWM``, reset per measurement), i.e. activations and
workspace, weights excluded.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from mmengine.logging import print_log

from ..errors import InvalidArgumentError
from ..inference import check_device

#: Fewest timed calls when a time cap (``max_seconds``) ends timing early.
MIN_TIMED_CALLS = 3


# ----------------------------------------------------------------------------- environment

def cpu_model_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """Versions and hardware that a timing depends on."""
    on_cuda = torch.device(device).type == 'cuda'
    return dict(
        torch_version=torch.__version__,
        device_name=torch.cuda.get_device_name(torch.device(device)) if on_cuda
        else cpu_model_name(),
        cpu_threads=torch.get_num_threads(),
        cuda_version=torch.version.cuda if on_cuda else None,
        cudnn_version=torch.backends.cudnn.version() if on_cuda else None)


def configure_backends(device: str, threads: Optional[int] = None, tf32: bool = True) -> None:
    """CPU threads; on CUDA cudnn.benchmark on and TF32 as asked.

    One CPU thread gives the steadiest CPU timings on a shared machine (OpenMP threads
    that wait for each other suffer most from other processes' load).
    """
    if threads is not None:
        if threads < 1:
            raise InvalidArgumentError(f'threads must be >= 1, got {threads}')
        torch.set_num_threads(threads)
    if check_device(device).type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32


def synchronize(device: str) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------- memory

def _proc_status_mb(key: str) -> Optional[float]:
    with contextlib.suppress(OSError):
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024  # kB
    return None


def _release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc), so the RSS baseline is not inflated
    by what an earlier model left in the allocator's free lists."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL('libc.so.6').malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is impossible."""
    try:
        Path('/proc/self/clear_refs').write_text('5')
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of the code run between :meth:`start` and :meth:`stop` (module doc)."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == 'cuda'
        self.device = device

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_freed_memory()
        self.rss_before = _proc_status_mb('VmRSS')
        self.hwm_reset = _reset_peak_rss()
        # Without /proc, ru_maxrss (kB on Linux) is the fallback: a lifetime peak.
        self.maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def stop(self) -> Optional[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        peak = _proc_status_mb('VmHWM') if self.hwm_reset else None
        if peak is not None and self.rss_before is not None:
            return max(0.0, peak - self.rss_before)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return max(0.0, maxrss - self.maxrss_before)


# --------------------------------------------------------------------------------- timing

@dataclass
class Timing:
    """What :func:`time_calls` measured for one call: seconds per timed call, and the
    highest peak memory (MB) over its blocks (None when not measured)."""

    seconds: list = field(default_factory=list)
    peak_mem_mb: Optional[float] = None


def time_calls(calls: Sequence[Callable[[], Any]], warmup: int, iters: int, device: str,
               rounds: int = 1, max_seconds: Optional[float] = None,
               memory: bool = True, name: str = '') -> list[Timing]:
    """Seconds per call of each of ``calls`` (see the module docstring).

    Args:
        calls: the functions to time, in the order they take turns.
        warmup: untimed calls of each function before any is timed.
        iters: timed calls per function and round.
        rounds: rounds over all functions.
        max_seconds: caps one function's timed total: its block of a round stops early
            once the cap is spent and :data:`MIN_TIMED_CALLS` calls were made.
        memory: measure the peak memory of each block (CPU: from before the warm-up).
        name: for the log line.
    """
    if iters < 1 or warmup < 0 or rounds < 1 or not calls:
        raise InvalidArgumentError(f'need iters >= 1, warmup >= 0, rounds >= 1 and a call '
                                   f'to time, got iters={iters}, warmup={warmup}, '
                                   f'rounds={rounds}, {len(calls)} calls')
    print_log(f'{name}: {len(calls)} call(s), {warmup} warm-up calls each, {rounds} x '
              f'{iters} timed calls', logger='current')
    meters = [PeakMemory(device) if memory else None for _ in calls]
    if memory and not meters[0].cuda:  # CPU: growth of the resident memory
        meters[0].start()              # from before the first call
    for call in calls:
        for _ in range(warmup):
            call()
    synchronize(device)
    timings = [Timing() for _ in calls]
    for round_index in range(rounds):
        for call, timing, meter in zip(calls, timings, meters):
            if meter is not None and (meter.cuda or round_index or len(calls) > 1):
                meter.start()  # on CUDA the timed calls only, not cuDNN's search
            for _ in range(iters):
                synchronize(device)
                start = time.perf_counter()
                call()
                synchronize(device)
                timing.seconds.append(time.perf_counter() - start)
                if max_seconds is not None and len(timing.seconds) >= MIN_TIMED_CALLS \
                        and sum(timing.seconds) >= max_seconds:
                    break
            if meter is not None:
                peak = meter.stop()
                timing.peak_mem_mb = peak if timing.peak_mem_mb is None else \
                    max(peak, timing.peak_mem_mb)
    return timings
