"""Inference speed of segmentors and classifiers: what ``tools/benchmark.py`` times.

What is timed (segmentation): mmseg's predict path in the **'whole'** inference mode,
``model.predict(inputs)`` on an already normalized ``N x 3 x H x W`` float32 batch on
the device: backbone, decode head, bilinear resize of the logits to the input size and
arg-max. The sliding-window mode of the configs' ``test_cfg`` (used for the mIoU) is
replaced by 'whole' for timing, so every model does one forward per image, as in the
paper's speed column; data loading and normalization are not timed. With
``fp16``/``channels_last`` the cast of the input happens inside the timed call (see
:mod:`repseg.inference`). Classification: ``model(x)`` on an ``N x 3 x H x W`` batch.

Protocol (:func:`repseg.speed.timing.time_calls`): ``warmup`` untimed calls, then
``iters`` timed calls, each bracketed by ``torch.cuda.synchronize()`` on CUDA (with
``cudnn.benchmark`` on); TF32 is on for fp32 CUDA runs unless ``tf32=False`` (the paper
protocol). ``fps`` is images per second over all timed calls; latencies are per call.
One :class:`~repseg.speed.record.SpeedRecord` per measured model; ``gflops`` counts one
multiply-add as one FLOP per image (mmseg/fvcore convention,
:func:`repseg.analysis.count_flops`).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.decode_heads.psp_head import PPM

from ..analysis import count_flops
from ..errors import InvalidArgumentError
from ..inference import prepare_for_inference
from ..mmseg.fast_psp import FastPPM, pyramid_avg_pool2d
from ..models.arch import canonical_arch_name
from ..models.block import RepVGGBlock
from .models import build_segmentor_to_time, classifier_model
from .record import SpeedRecord, add_ratios, make_record
from .timing import configure_backends, environment, time_calls

#: The paper's speed protocol (Table 8): batch 16, 713x713, fp32, no TF32.
PAPER_PROTOCOL = dict(batch=16, shape=(713, 713), fp16=False, channels_last=False, tf32=False)
#: The issue's protocol (REFERENCES section 5): batch 1, one 1024x2048 Cityscapes frame.
DEFAULT_SHAPE = (1024, 2048)
CLS_DEFAULTS = dict(batch=128, shape=(224, 224))


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

    def configure(self) -> None:
        configure_backends(self.device, self.threads, self.tf32)


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


def uses_fast_pooling(model: nn.Module) -> Optional[bool]:
    modules = list(model.modules())
    if any(isinstance(m, FastPPM) for m in modules):
        return True
    return False if any(isinstance(m, PPM) for m in modules) else None


def has_repvgg(model: nn.Module) -> bool:
    return any(isinstance(m, RepVGGBlock) for m in model.modules())


def arch_of(model: nn.Module) -> Optional[str]:
    backbone = getattr(model, 'backbone', model)
    arch = getattr(backbone, 'arch', None)
    if arch is None and hasattr(backbone, 'depth'):
        return f'ResNet-{backbone.depth}'
    return str(arch) if arch is not None else type(backbone).__name__


def segmentation_target(config, settings: BenchmarkSettings, checkpoint=None,
                        fuse: bool = True, cfg_options: Optional[dict] = None,
                        model: Optional[nn.Module] = None) -> Target:
    """Build (or take) a segmentor and prepare it as ``settings`` say."""
    if model is None:
        model = build_segmentor_to_time(config, checkpoint, settings.device, cfg_options)
    repvgg = has_repvgg(model)
    if settings.backend == 'onnxruntime':
        return _onnx_segmentation_target(config, model, settings, repvgg)
    prepare_for_inference(model, fuse=fuse, fp16=settings.fp16,
                          channels_last=settings.channels_last,
                          fast_pooling=settings.fast_pooling)
    inputs = torch.randn(settings.batch, 3, *settings.shape, device=settings.device)
    stem = Path(str(config)).stem if config is not None else arch_of(model)
    fused = fuse if repvgg else None
    name = stem + ('' if fused is None else ' (fused)' if fused else ' (train-time)')

    def run():
        with torch.inference_mode():
            return model.predict(inputs)

    return Target(name, model, run, model, 'segmentation', str(config) if config else None,
                  arch_of(model), fused, flops_shape=settings.shape)


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
    from ..export import export_onnx
    from ..onnx_backend import OnnxGraph

    check_onnx_runtime_settings(settings, 'the onnxruntime backend')
    path = Path(tempfile.mkdtemp(prefix='repseg_bench_')) / 'model.onnx'
    wrapper = export_onnx(model, path, shape=settings.shape, labels=True,
                          batch=settings.batch)
    graph = OnnxGraph(path, settings.threads)
    image = np.random.default_rng(0).uniform(
        0, 255, (settings.batch, 3, *settings.shape)).astype(np.float32)
    stem = Path(str(config)).stem if config is not None else arch_of(model)
    return Target(f'{stem} (onnxruntime)', wrapper, lambda: graph.run(image),
                  wrapper.segmentor, 'segmentation', str(config) if config else None,
                  arch_of(model), True if repvgg else None, backend='onnxruntime',
                  flops_shape=settings.shape)


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


def benchmark_pooling(channels: int, settings: BenchmarkSettings) -> list[SpeedRecord]:
    """Time :func:`pooling_targets` (no FLOPs counted)."""
    return run_targets([lambda: pooling_targets(channels, settings)], settings)


# ----------------------------------------------------------------------------- measuring

def target_record(target: Target, settings: BenchmarkSettings, timing,
                  gflops: Optional[float] = None) -> SpeedRecord:
    """The record of ``target`` from its timing (:func:`~.record.make_record`)."""
    params = sum(p.numel() for name, p in target.model.named_parameters()
                 if 'auxiliary_head' not in name)
    on_cuda = torch.device(settings.device).type == 'cuda'
    return make_record(
        timing, settings.batch, settings.warmup, gflops, name=target.name,
        config=target.config, arch=target.arch, task=target.task, fused=target.fused,
        dtype=target.dtype or settings.dtype_name, channels_last=settings.channels_last,
        shape=list(settings.shape), device=settings.device, backend=target.backend,
        params_m=params / 1e6, tf32=settings.tf32 and not settings.fp16 if on_cuda else None,
        fast_pooling=target.fast_pooling if target.task == 'pooling'
        else uses_fast_pooling(target.model),
        outcomes=target.outcomes, environment=environment(settings.device))


def measure(target: Target, settings: BenchmarkSettings) -> SpeedRecord:
    """Time one target and count its FLOPs."""
    [timing] = time_calls([target.run], settings.warmup, settings.iters, settings.device,
                          max_seconds=settings.max_seconds, name=target.name)
    gflops = None
    if settings.count_flops and target.flops_model is not None:
        gflops = count_flops(target.flops_model, target.flops_shape)
    return target_record(target, settings, timing, gflops)


def run_targets(make_targets: Sequence[Callable[[], Iterable[Target]]],
                settings: BenchmarkSettings) -> list[SpeedRecord]:
    """Measure the targets of each factory in turn; only one model is alive at a time."""
    settings.configure()
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
        return build_segmentor_to_time(config, checkpoint, settings.device, cfg_options)

    model = build()
    if with_train_time and fuse and has_repvgg(model) and settings.backend == 'pytorch':
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
                         cfg_options: Optional[dict] = None) -> list[SpeedRecord]:
    """Time each config's segmentor (``checkpoint`` applies to the first config only).

    ``with_train_time`` also times the unfused model of every RepVGG config, right
    before the fused one, so ``speedup_vs_train_time`` is filled.
    """
    return run_targets(
        [lambda config=config, index=index: segmentation_targets(
            config, settings, checkpoint if index == 0 else None, fuse, with_train_time,
            cfg_options) for index, config in enumerate(configs)], settings)


def benchmark_classifiers(names: Sequence[str],
                          settings: BenchmarkSettings) -> list[SpeedRecord]:
    """Time classifiers: RepVGG archs (train-time and fused) and torchvision ResNets."""
    for name in names:
        classifier_model(name, build=False)  # fail on a typo before timing anything
    return run_targets([lambda name=name: classification_targets(name, settings)
                        for name in names], settings)
