"""The speed options side by side for one config, in one process: what each one gains.

:func:`measure_speed_variants` builds one segmentor (random weights, BN statistics set from
the input, see :func:`calibrate_batch_norms`), fuses it, keeps a float32 copy as the
reference (TF32 off) and prepares a copy as the benchmark does (fp16 channels-last by
default). Each variant is a deep copy of that prepared model behind a different call path:

- ``mmseg predict``: ``model.predict(inputs)``, what ``tools/benchmark.py`` times;
- ``predictor``: :class:`~.SegmentationPredictor` without options (the same work minus
  mmseg's per-image ``SegDataSample`` bookkeeping);
- ``+conv_relu``, ``+factored_psp``, ``+resize_argmax``, ``+cuda_graph``: one option each;
- ``all``: the four together; with ``compile_model`` also ``+compile_model`` and
  ``all + compile_model`` (minutes of compiling for a big model).

Timing: ``rounds`` interleaved rounds over all variants, each ``warmup`` untimed and
``iters`` timed synchronized calls (:func:`repseg.benchmark.time_calls`); a variant's
latencies are pooled over its rounds, and every ratio compares variants of the same run.
Each variant's labels are compared with the float32 reference's on the same input.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..benchmark import (BenchmarkSettings, build_benchmark_segmentor, configure_backends,
                         environment, time_calls)
from ..errors import UserError
from ..inference import check_device, prepare_for_inference
from .predictor import SegmentationPredictor, SpeedOptions

class VariantsError(UserError, ValueError):
    """An unknown variant name or an impossible timing request."""


#: name -> options (None: mmseg's ``model.predict``), in timing order.
VARIANTS = {
    'mmseg predict': None,
    'predictor': SpeedOptions(),
    '+conv_relu': SpeedOptions(conv_relu=True),
    '+factored_psp': SpeedOptions(factored_psp=True),
    '+resize_argmax': SpeedOptions(resize_argmax=True),
    '+cuda_graph': SpeedOptions(cuda_graph=True),
    'all': SpeedOptions.all(),
}
COMPILE_VARIANTS = {
    '+compile_model': SpeedOptions(compile_model=True),
    'all + compile_model': SpeedOptions.all(compile_model=True),
}


@dataclass
class VariantRecord:
    """One call path: its options and their outcomes, speed, memory and agreement.

    ``agreement`` is the fraction of pixels labelled as by the float32 reference;
    ``speedup`` is fps over the first variant's (``mmseg predict``); ``build_s`` the
    seconds spent building the path (warm-up, compiling, capturing).
    """

    name: str
    options: list
    outcomes: dict
    fps: float
    latency_ms_median: float
    latency_ms_p90: float
    peak_mem_mb: Optional[float]
    agreement: float
    build_s: float
    speedup: Optional[float] = None


@dataclass
class VariantsResult:
    """Everything one run measured (``to_dict`` is what ``--json`` writes)."""

    config: str
    shape: list
    batch: int
    dtype: str
    channels_last: bool
    device: str
    reference_classes: int  # classes the reference predicts: agreement means little if 1
    reference_top_class_share: float
    records: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def calibrate_batch_norms(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to those of ``inputs`` (in place; eval mode after;
    ``inputs`` needs two or more images for PSP's 1x1 bin).

    A freshly built BN is the identity in eval mode, so through dozens of random convs the
    activations shrink towards zero and the classifier predicts one class everywhere,
    which would make any label agreement trivially perfect. One forward pass with the BNs
    in train mode and cumulative averaging (``momentum=None``) gives every layer
    unit-scale outputs, as trained BNs do. Run it before fusing (fused blocks hold no BN).
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        model(inputs, mode='tensor')
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.eval()
    return model


def smooth_inputs(batch: int, shape: Sequence[int], device: str, seed: int = 0) -> torch.Tensor:
    """A normalized batch with image-like regions: random colours at 1/16 scale, upsampled,
    plus a little noise (predictions then form regions, as on real frames)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape
    coarse = torch.randn(batch, 3, max(1, height // 16), max(1, width // 16),
                         generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode='bilinear', align_corners=False)
    return (image + 0.1 * torch.randn(image.shape, generator=generator)).to(device)


def _predict_labels(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.stack([s.pred_sem_seg.data[0] for s in model.predict(inputs)])


def _call_path(model: nn.Module, inputs: torch.Tensor,
               options: Optional[SpeedOptions]) -> tuple[Callable[[], torch.Tensor], dict]:
    """The timed call of a variant and the outcomes of its options."""
    if options is None:
        return (lambda: _predict_labels(model, inputs)), {}
    predictor = SegmentationPredictor(model, inputs, options)
    return (lambda: predictor(inputs)), predictor.report.to_dict()


def measure_speed_variants(config, shape: Sequence[int] = (1024, 2048), batch: int = 1,
                           device: str = 'cuda', fp16: bool = True,
                           channels_last: bool = True, warmup: int = 3, iters: int = 10,
                           rounds: int = 2, compile_model: bool = False,
                           variants: Optional[Sequence[str]] = None,
                           checkpoint=None, cfg_options: Optional[dict] = None,
                           seed: int = 0, threads: Optional[int] = None) -> VariantsResult:
    """Time every variant (module doc) of ``config``; ``variants`` picks some by name."""
    table = {**VARIANTS, **(COMPILE_VARIANTS if compile_model else {})}
    names = list(variants) if variants else list(table)
    unknown = [name for name in names if name not in {**VARIANTS, **COMPILE_VARIANTS}]
    if unknown:
        raise VariantsError(f'unknown variants {unknown}; choose from '
                            f'{list(VARIANTS) + list(COMPILE_VARIANTS)}')
    if rounds < 1 or iters < 1 or warmup < 0:
        raise VariantsError(f'need rounds >= 1, iters >= 1 and warmup >= 0, got rounds '
                            f'{rounds}, iters {iters}, warmup {warmup}')
    check_device(device)
    configure_backends(BenchmarkSettings(device=device, tf32=False, threads=threads))
    inputs = smooth_inputs(batch, shape, device, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = build_benchmark_segmentor(config, checkpoint, device, cfg_options)
    if checkpoint is None:  # two other images: a 1x1 pyramid bin needs > 1 value per BN
        calibrate_batch_norms(reference, smooth_inputs(2, shape, device, seed + 1))
    prepare_for_inference(reference, fuse=True)
    expected = _predict_labels(reference, inputs)
    counts = torch.bincount(expected.flatten().cpu())
    prepared = prepare_for_inference(copy.deepcopy(reference), fuse=True, fp16=fp16,
                                     channels_last=channels_last)
    del reference

    paths = {}
    for name in names:
        options = {**VARIANTS, **COMPILE_VARIANTS}[name]
        start = time.perf_counter()
        call, outcomes = _call_path(copy.deepcopy(prepared), inputs, options)
        build_s = time.perf_counter() - start
        agreement = float((call() == expected).double().mean())
        paths[name] = (call, outcomes, build_s, agreement, options)

    times = {name: [] for name in names}
    peaks = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            spent, peak = time_calls(paths[name][0], warmup, iters, device, name)
            times[name] += spent
            peaks[name].append(peak)

    result = VariantsResult(
        config=str(config), shape=list(shape), batch=batch,
        dtype='float16' if fp16 else 'float32', channels_last=channels_last, device=device,
        reference_classes=int((counts > 0).sum()),
        reference_top_class_share=float(counts.max() / counts.sum()),
        environment=environment(device))
    for name in names:
        _, outcomes, build_s, agreement, options = paths[name]
        spent = times[name]
        known_peaks = [p for p in peaks[name] if p is not None]
        result.records.append(VariantRecord(
            name=name, options=options.names() if options else [], outcomes=outcomes,
            fps=batch * len(spent) / sum(spent),
            latency_ms_median=1e3 * statistics.median(spent),
            latency_ms_p90=1e3 * float(np.percentile(spent, 90)),
            peak_mem_mb=max(known_peaks) if known_peaks else None,
            agreement=agreement, build_s=build_s))
    for record in result.records:
        record.speedup = record.fps / result.records[0].fps
    return result


def format_variants(result: VariantsResult) -> str:
    """A Markdown table of the variants, then one line per option that did not apply."""
    header = ('| variant | img/s | median ms | p90 ms | peak MB | vs first | '
              'agreement vs fp32 | build s |')
    lines = [header, '|' + '---|' * 8]
    for r in result.records:
        peak = '-' if r.peak_mem_mb is None else f'{r.peak_mem_mb:.0f}'
        lines.append(f'| {r.name} | {r.fps:.2f} | {r.latency_ms_median:.2f} | '
                     f'{r.latency_ms_p90:.2f} | {peak} | {r.speedup:.2f}x | '
                     f'{100 * r.agreement:.3f}% | {r.build_s:.1f} |')
    notes = [f'- {r.name}: {option}: {outcome["detail"]}'
             for r in result.records for option, outcome in r.outcomes.items()
             if not outcome['applied']]
    dtype = result.dtype + (' channels-last' if result.channels_last else '')
    shape = 'x'.join(str(s) for s in result.shape)
    lines.insert(0, f'{result.config}, batch {result.batch} at {shape}, {dtype}, '
                    f'{result.device}; reference (fused fp32, TF32 off) predicts '
                    f'{result.reference_classes} classes (top class '
                    f'{100 * result.reference_top_class_share:.1f}% of pixels)\n')
    if notes:
        lines += ['', 'Options that did not take effect:', *notes]
    return '\n'.join(lines)
