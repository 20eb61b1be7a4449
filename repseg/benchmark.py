"""Inference speed of segmentors and classifiers: what ``tools/benchmark.py`` measures.

What is timed (segmentation): mmseg's predict path in the **'whole'** inference mode,
``model.predict(inputs)`` on an already normalized ``N x 3 x H x W`` float32 batch on
the device: backbone, decode head, bilinear resize of the logits to the input size and
arg-max. The sliding-window mode of the configs' ``test_cfg`` (used for the mIoU) is
replaced by 'whole' for timing, so every model does one forward per image, as in the
paper's speed column; data loading and normalization are not timed. With
``fp16``/``channels_last`` the cast of the input happens inside the timed call (see
:mod:`repseg.inference`). Classification: ``model(x)`` on an ``N x 3 x H x W`` batch.

Protocol: ``warmup`` untimed calls, then ``iters`` timed calls, each bracketed by
``torch.cuda.synchronize()`` on CUDA (with ``cudnn.benchmark`` on); TF32 is on for
fp32 CUDA runs unless ``tf32=False`` (the paper protocol). ``fps`` is images per second
over all timed calls (``batch * iters / total time``); latencies are per call (batch).

One record per measured model (:class:`BenchmarkRecord`); ``--json`` writes a list of
them (``records_to_json``). ``gflops`` counts one multiply-add as one FLOP per image
(mmseg/fvcore convention, :func:`repseg.analysis.count_flops`); ``tflops`` is the
achieved hardware rate, counting a multiply-add as **two** FLOPs:
``2 * gflops * fps / 1000``. ``peak_mem_mb`` on CUDA is ``torch.cuda.max_memory_allocated``
during the timed calls (weights included); on CPU it is the growth of the process's
peak resident memory over its resident memory before the calls (Linux ``VmHWM``, reset
per record), i.e. activations and workspace, weights excluded.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.logging import print_log
from mmseg.models.decode_heads.psp_head import PPM

from .analysis import count_flops
from .errors import InvalidArgumentError
from .fileio import write_text_atomically
from .inference import check_device, prepare_for_inference
from .mmseg.fast_psp import FastPPM, pyramid_avg_pool2d
from .models.arch import canonical_arch_name
from .models.block import RepVGGBlock
from .models.repvgg import create_model

#: The paper's speed protocol (Table 8): batch 16, 713x713, fp32, no TF32.
PAPER_PROTOCOL = dict(batch=16, shape=(713, 713), fp16=False, channels_last=False, tf32=False)
#: The issue's protocol (REFERENCES section 5): batch 1, one 1024x2048 Cityscapes frame.
DEFAULT_SHAPE = (1024, 2048)
CLS_DEFAULTS = dict(batch=128, shape=(224, 224))
#: Fewest timed calls when a time cap (``max_seconds``) ends timing early.
MIN_TIMED_CALLS = 3
TORCHVISION_CLASSIFIERS = ('resnet50', 'resnet101', 'resnet152')


@dataclass
class BenchmarkSettings:
    """How to run every model of one benchmark."""

    shape: tuple[int, int] = DEFAULT_SHAPE
    batch: int = 1
    fp16: bool = False
    channels_last: bool = False
    warmup: int = 5
    iters: int = 30
    device: str = 'cuda' if torch.cuda.is_available() else 'cpu'
    tf32: bool = True
    backend: str = 'pytorch'
    count_flops: bool = True
    threads: Optional[int] = None  # CPU threads (torch.set_num_threads); None: leave as is
    fast_pooling: Optional[bool] = None  # PSP matmul pooling; None: with fp16/channels-last
    max_seconds: Optional[float] = None  # cap on the timed calls' total (see time_calls)

    @property
    def dtype_name(self) -> str:
        return 'float16' if self.fp16 else 'float32'


@dataclass
class BenchmarkRecord:
    """One measured model. The JSON file is a list of these (see :func:`records_to_json`).

    Fields: ``name`` (display name), ``config`` (segmentation config path, else None),
    ``arch`` (backbone/classifier name), ``task`` ('segmentation'/'classification'),
    ``fused`` (RepVGG blocks re-parameterized; None for models without them),
    ``dtype``, ``channels_last``, ``batch``, ``shape`` ([H, W]), ``device``, ``backend``,
    ``fps`` (images/s), ``latency_ms_median``, ``latency_ms_p90``, ``latency_ms_min``
    (per call), ``peak_mem_mb``, ``gflops`` (per image, 1 multiply-add = 1 FLOP),
    ``tflops`` (achieved, 1 multiply-add = 2 FLOPs), ``params_m`` (millions),
    ``tf32`` (None off CUDA), ``fast_pooling`` (PSP pyramid pooling in the matmul form of
    :mod:`repseg.mmseg.fast_psp`; None for models without a PSP head), ``warmup``,
    ``iters``, ``fps_ratio`` (fps over the first record's), ``speedup_vs_train_time``
    (fused fps over its train-time twin's, when both were measured), ``label_agreement``
    (fraction of pixels labelled as by the first record's model, backend comparisons
    only), and the environment: ``torch_version``, ``device_name``, ``cpu_threads``, ``cuda_version``,
    ``cudnn_version``.
    """

    name: str
    config: Optional[str]
    arch: Optional[str]
    task: str
    fused: Optional[bool]
    dtype: str
    channels_last: bool
    batch: int
    shape: list[int]
    device: str
    backend: str
    fps: float
    latency_ms_median: float
    latency_ms_p90: float
    latency_ms_min: float
    peak_mem_mb: Optional[float]
    gflops: Optional[float]
    tflops: Optional[float]
    params_m: float
    tf32: Optional[bool]
    fast_pooling: Optional[bool]
    warmup: int
    iters: int
    fps_ratio: Optional[float] = None
    speedup_vs_train_time: Optional[float] = None
    label_agreement: Optional[float] = None
    environment: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        record = asdict(self)
        record.update(record.pop('environment'))
        return record


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


def configure_backends(settings: BenchmarkSettings) -> None:
    """CPU threads; on CUDA cudnn.benchmark on and TF32 as the settings say.

    One CPU thread gives the steadiest CPU timings on a shared machine (OpenMP threads
    that wait for each other suffer most from other processes' load).
    """
    if settings.threads is not None:
        if settings.threads < 1:
            raise InvalidArgumentError(f'threads must be >= 1, got {settings.threads}')
        torch.set_num_threads(settings.threads)
    if check_device(settings.device).type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32


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
    """Peak memory of the code run between :meth:`start` and :meth:`stop` (see module doc)."""

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

def synchronize(device: str) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, device: str,
               name: str = '', max_seconds: Optional[float] = None,
               ) -> tuple[list[float], Optional[float]]:
    """Seconds per call of ``fn`` after ``warmup`` calls, and the peak memory in MB.

    ``max_seconds`` caps the timed calls' total: timing stops early once it is spent and
    at least :data:`MIN_TIMED_CALLS` calls were made (so slow models cost a bounded time).
    """
    if iters < 1 or warmup < 0:
        raise InvalidArgumentError(f'need iters >= 1 and warmup >= 0, got iters={iters}, '
                                   f'warmup={warmup}')
    memory = PeakMemory(device)
    if not memory.cuda:  # CPU: growth of the resident memory from before the first call
        memory.start()
    print_log(f'{name}: {warmup} warm-up calls, {iters} timed calls', logger='current')
    for _ in range(warmup):
        fn()
    synchronize(device)
    if memory.cuda:  # the timed calls only: not cuDNN's algorithm search in the warm-up,
        memory.start()  # whose workspace a deployed model does not keep
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if max_seconds is not None and len(times) >= MIN_TIMED_CALLS \
                and sum(times) >= max_seconds:
            break
    return times, memory.stop()


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# -------------------------------------------------------------------------------- targets

@dataclass
class Target:
    """A prepared model and the call that is timed."""

    name: str
    model: nn.Module
    run: Callable[[], Any]
    flops_model: Optional[nn.Module]
    task: str
    config: Optional[str] = None
    arch: Optional[str] = None
    fused: Optional[bool] = None
    backend: str = 'pytorch'
    flops_shape: Optional[tuple[int, int]] = None
    fast_pooling: Optional[bool] = None  # for pooling targets; models are inspected
    outcomes: Optional[dict] = None  # repseg.fast_inference speed options: what took effect
    dtype: Optional[str] = None  # what runs, when not the settings' (bfloat16, int8)


def _uses_fast_pooling(model: nn.Module) -> Optional[bool]:
    modules = list(model.modules())
    if any(isinstance(m, FastPPM) for m in modules):
        return True
    return False if any(isinstance(m, PPM) for m in modules) else None


def _has_repvgg(model: nn.Module) -> bool:
    return any(isinstance(m, RepVGGBlock) for m in model.modules())


def _arch_of(model: nn.Module) -> Optional[str]:
    backbone = getattr(model, 'backbone', model)
    arch = getattr(backbone, 'arch', None)
    if arch is None and hasattr(backbone, 'depth'):
        return f'ResNet-{backbone.depth}'
    return str(arch) if arch is not None else type(backbone).__name__


def build_benchmark_segmentor(config, checkpoint=None, device: str = 'cpu',
                              cfg_options: Optional[dict] = None) -> nn.Module:
    """A segmentor with plain BN, test mode 'whole', on ``device`` (random weights if no
    checkpoint)."""
    from .mmseg.builder import build_segmentor, load_config

    cfg = load_config(config, cfg_options)
    model = build_segmentor(cfg, checkpoint, device)
    model.test_cfg = ConfigDict(mode='whole')
    return model


def segmentation_target(config, settings: BenchmarkSettings, checkpoint=None,
                        fuse: bool = True, cfg_options: Optional[dict] = None,
                        model: Optional[nn.Module] = None) -> Target:
    """Build (or take) a segmentor and prepare it as ``settings`` say."""
    if model is None:
        model = build_benchmark_segmentor(config, checkpoint, settings.device, cfg_options)
    repvgg = _has_repvgg(model)
    if settings.backend == 'onnxruntime':
        return _onnx_segmentation_target(config, model, settings, repvgg)
    prepare_for_inference(model, fuse=fuse, fp16=settings.fp16,
                          channels_last=settings.channels_last,
                          fast_pooling=settings.fast_pooling)
    inputs = torch.randn(settings.batch, 3, *settings.shape, device=settings.device)
    stem = Path(str(config)).stem if config is not None else _arch_of(model)
    fused = fuse if repvgg else None
    name = stem + ('' if fused is None else ' (fused)' if fused else ' (train-time)')

    def run():
        with torch.inference_mode():
            return model.predict(inputs)

    return Target(name, model, run, model, 'segmentation', str(config) if config else None,
                  _arch_of(model), fused, flops_shape=settings.shape)


def check_onnx_runtime_settings(settings: BenchmarkSettings, what: str) -> None:
    """ONNX Runtime paths time the float32 NCHW export on the CPU: refuse other settings
    (``what`` names the path in the message)."""
    if torch.device(settings.device).type != 'cpu':
        raise InvalidArgumentError(f'{what} is timed on the CPU only (--device cpu)')
    if settings.fp16 or settings.channels_last:
        raise InvalidArgumentError(f'{what} runs the float32 NCHW model; drop '
                                   '--fp16/--channels-last')


def _onnx_segmentation_target(config, model: nn.Module, settings: BenchmarkSettings,
                              repvgg: bool) -> Target:
    """Export the fused segmentor (label-map output, so arg-max is timed as well)."""
    from .export import export_onnx, onnx_session, run_onnx

    check_onnx_runtime_settings(settings, 'the onnxruntime backend')
    tmp = tempfile.mkdtemp(prefix='repseg_bench_')
    path = Path(tmp) / 'model.onnx'
    wrapper = export_onnx(model, path, shape=settings.shape, labels=True,
                          batch=settings.batch)
    session = onnx_session(path, settings.threads)
    image = np.random.default_rng(0).uniform(
        0, 255, (settings.batch, 3, *settings.shape)).astype(np.float32)
    stem = Path(str(config)).stem if config is not None else _arch_of(model)
    return Target(f'{stem} (onnxruntime)', wrapper, lambda: run_onnx(session, image),
                  wrapper.segmentor, 'segmentation', str(config) if config else None,
                  _arch_of(model), True if repvgg else None, backend='onnxruntime',
                  flops_shape=settings.shape)


def classifier_model(name: str, build: bool = True) -> tuple[Optional[nn.Module], bool]:
    """A classifier with random weights by name: a RepVGG arch or a torchvision ResNet.

    Returns the model (None with ``build=False``, which only checks the name) and
    whether it is a RepVGG. Unknown names raise ``ValueError``.
    """
    if name.lower() in TORCHVISION_CLASSIFIERS:
        if not build:
            return None, False
        import torchvision

        return getattr(torchvision.models, name.lower())(weights=None), False
    canonical_arch_name(name)  # raises ValueError listing the RepVGG archs
    return (create_model(name) if build else None), True


def classification_targets(name: str, settings: BenchmarkSettings) -> Iterator[Target]:
    """A RepVGG arch as train-time then fused, or a torchvision ResNet as it is.

    A generator: each model is built when the previous one has been measured.
    """
    if settings.backend != 'pytorch':
        raise InvalidArgumentError('classification mode runs the pytorch backend only')
    inputs = torch.randn(settings.batch, 3, *settings.shape, device=settings.device)
    _, repvgg = classifier_model(name, build=False)
    for fused in ((False, True) if repvgg else (None,)):
        model = classifier_model(name)[0].to(settings.device).eval()
        prepare_for_inference(model, fuse=bool(fused), fp16=settings.fp16,
                              channels_last=settings.channels_last)
        label = canonical_arch_name(name) if repvgg else name.lower()
        display = label + ('' if fused is None else ' (fused)' if fused else ' (train-time)')

        def run(model=model):
            with torch.inference_mode():
                return model(inputs)

        target = Target(display, model, run, model, 'classification', arch=label,
                        fused=fused, flops_shape=settings.shape)
        del model, run
        yield target
        del target


def pooling_targets(channels: int, settings: BenchmarkSettings) -> Iterator[Target]:
    """PSP pyramid pooling alone (bins 1, 2, 3, 6): PyTorch's op vs the matmul form.

    The feature map is what the PSP head sees at output stride 8:
    ``batch x channels x H/8 x W/8`` (``shape = (H, W)``), in the settings' dtype and
    memory format. Isolates the cost REFERENCES section 5 measured (about 14 ms per
    ``adaptive_avg_pool2d`` call on fp16 channels-last on an H100).
    """
    bins = (1, 2, 3, 6)
    dtype = torch.float16 if settings.fp16 else torch.float32
    x = torch.randn(settings.batch, channels, settings.shape[0] // 8, settings.shape[1] // 8,
                    device=settings.device, dtype=dtype)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = {'adaptive_avg_pool2d x4': lambda: [F.adaptive_avg_pool2d(x, b) for b in bins],
             'pyramid_avg_pool2d': lambda: pyramid_avg_pool2d(x, bins)}
    for name, call in calls.items():
        yield Target(f'{name} ({channels}x{x.shape[2]}x{x.shape[3]})', nn.Module(), call,
                     None, 'pooling', fast_pooling=name == 'pyramid_avg_pool2d')


def benchmark_pooling(channels: int, settings: BenchmarkSettings) -> list[BenchmarkRecord]:
    """Time :func:`pooling_targets` (no FLOPs counted)."""
    return run_targets([lambda: pooling_targets(channels, settings)], settings)


# ----------------------------------------------------------------------------- measuring

def measure(target: Target, settings: BenchmarkSettings) -> BenchmarkRecord:
    """Time one target and count its FLOPs."""
    times, peak = time_calls(target.run, settings.warmup, settings.iters, settings.device,
                             target.name, settings.max_seconds)
    gflops = None
    if settings.count_flops and target.flops_model is not None:
        gflops = count_flops(target.flops_model, target.flops_shape)
    return make_record(target, settings, times, peak, gflops)


def make_record(target: Target, settings: BenchmarkSettings, times: Sequence[float],
                peak: Optional[float], gflops: Optional[float]) -> BenchmarkRecord:
    """The record of ``target`` from its per-call ``times`` (seconds), peak memory (MB)
    and GFLOPs per image."""
    fps = settings.batch * len(times) / sum(times)
    params = sum(p.numel() for name, p in target.model.named_parameters()
                 if 'auxiliary_head' not in name)
    on_cuda = torch.device(settings.device).type == 'cuda'
    record = BenchmarkRecord(
        name=target.name, config=target.config, arch=target.arch, task=target.task,
        fused=target.fused, dtype=target.dtype or settings.dtype_name,
        channels_last=settings.channels_last,
        batch=settings.batch, shape=list(settings.shape), device=settings.device,
        backend=target.backend, fps=fps,
        latency_ms_median=1e3 * statistics.median(times),
        latency_ms_p90=1e3 * _percentile(times, 90), latency_ms_min=1e3 * min(times),
        peak_mem_mb=peak, gflops=gflops,
        tflops=None if gflops is None else 2 * gflops * fps / 1e3,
        params_m=params / 1e6, tf32=settings.tf32 and not settings.fp16 if on_cuda else None,
        fast_pooling=target.fast_pooling if target.task == 'pooling'
        else _uses_fast_pooling(target.model),
        warmup=settings.warmup, iters=len(times),
        environment=environment(settings.device))
    print_log(f'{target.name}: {fps:.2f} img/s, median {record.latency_ms_median:.1f} ms',
              logger='current')
    return record


def add_ratios(records: list[BenchmarkRecord]) -> list[BenchmarkRecord]:
    """Fill ``fps_ratio`` (vs the first record) and ``speedup_vs_train_time``."""
    if not records:
        return records
    for record in records:
        record.fps_ratio = record.fps / records[0].fps
    train_time = {(r.config, r.arch): r for r in records if r.fused is False}
    for record in records:
        twin = train_time.get((record.config, record.arch)) if record.fused else None
        if twin is not None:
            record.speedup_vs_train_time = record.fps / twin.fps
    return records


def run_targets(make_targets: Sequence[Callable[[], Iterable[Target]]],
                settings: BenchmarkSettings) -> list[BenchmarkRecord]:
    """Measure the targets of each factory in turn; only one model is alive at a time."""
    configure_backends(settings)
    records = []
    for make in make_targets:
        for target in make():
            records.append(measure(target, settings))
            del target
            if torch.device(settings.device).type == 'cuda':
                torch.cuda.empty_cache()
    return add_ratios(records)


def segmentation_targets(config, settings: BenchmarkSettings, checkpoint=None,
                         fuse: bool = True, with_train_time: bool = False,
                         cfg_options: Optional[dict] = None) -> Iterator[Target]:
    """One config's segmentor; with ``with_train_time`` (RepVGG only) first unfused.

    A generator: the fused model is built after the train-time one has been measured.
    """
    def build():
        return build_benchmark_segmentor(config, checkpoint, settings.device, cfg_options)

    model = build()
    if with_train_time and fuse and _has_repvgg(model) and settings.backend == 'pytorch':
        target = segmentation_target(config, settings, fuse=False, model=model)
        del model
        yield target
        del target
        model = build()
    target = segmentation_target(config, settings, fuse=fuse, model=model)
    del model
    yield target


def benchmark_segmentors(configs: Sequence, settings: BenchmarkSettings,
                         checkpoint=None, fuse: bool = True, with_train_time: bool = False,
                         cfg_options: Optional[dict] = None) -> list[BenchmarkRecord]:
    """Time each config's segmentor (``checkpoint`` applies to the first config only).

    ``with_train_time`` also times the unfused model of every RepVGG config, right
    before the fused one, so ``speedup_vs_train_time`` is filled.
    """
    return run_targets(
        [lambda config=config, index=index: segmentation_targets(
            config, settings, checkpoint if index == 0 else None, fuse, with_train_time,
            cfg_options) for index, config in enumerate(configs)], settings)


def benchmark_classifiers(names: Sequence[str],
                          settings: BenchmarkSettings) -> list[BenchmarkRecord]:
    """Time classifiers: RepVGG archs (train-time and fused) and torchvision ResNets."""
    for name in names:
        classifier_model(name, build=False)  # fail on a typo before timing anything
    return run_targets([lambda name=name: classification_targets(name, settings)
                        for name in names], settings)


# -------------------------------------------------------------------------------- output

TABLE_COLUMNS = (
    ('model', lambda r: r.name),
    ('dtype', lambda r: r.dtype + (' CL' if r.channels_last else '')),
    ('batch', lambda r: str(r.batch)),
    ('shape', lambda r: f'{r.shape[0]}x{r.shape[1]}'),
    ('img/s', lambda r: f'{r.fps:.2f}'),
    ('median ms', lambda r: f'{r.latency_ms_median:.1f}'),
    ('p90 ms', lambda r: f'{r.latency_ms_p90:.1f}'),
    ('peak MB', lambda r: '-' if r.peak_mem_mb is None else f'{r.peak_mem_mb:.0f}'),
    ('GFLOPs', lambda r: '-' if r.gflops is None else f'{r.gflops:.1f}'),
    ('TFLOP/s', lambda r: '-' if r.tflops is None else f'{r.tflops:.3f}'),
    ('vs first', lambda r: '-' if r.fps_ratio is None else f'{r.fps_ratio:.2f}x'),
    ('vs train-time', lambda r: '-' if r.speedup_vs_train_time is None
     else f'{r.speedup_vs_train_time:.2f}x'),
)


def format_table(records: Sequence[BenchmarkRecord]) -> str:
    """A Markdown table of the records (one row each)."""
    header = [title for title, _ in TABLE_COLUMNS]
    rows = [[cell(record) for _, cell in TABLE_COLUMNS] for record in records]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return '| ' + ' | '.join(c.ljust(w) for c, w in zip(cells, widths)) + ' |'

    rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([line(header), rule, *map(line, rows)])


def describe_environment(records: Sequence[BenchmarkRecord]) -> str:
    if not records:
        return ''
    env = records[0].environment
    parts = [f"torch {env['torch_version']}", env['device_name'],
             f"{env['cpu_threads']} CPU threads"]
    if env.get('cuda_version'):
        parts.append(f"CUDA {env['cuda_version']}, cuDNN {env['cudnn_version']}")
    return ', '.join(parts)


def records_to_json(records: Sequence[BenchmarkRecord], path: os.PathLike | str) -> None:
    """Write the records (atomically) as a JSON list of flat objects (fields:
    :class:`BenchmarkRecord`)."""
    write_text_atomically(path, json.dumps([r.to_dict() for r in records], indent=2) + '\n')
