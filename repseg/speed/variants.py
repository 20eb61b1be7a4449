"""The fast-inference call paths side by side for one config, in one process.

``tools/benchmark.py CONFIG --variants [NAME ...]``: :func:`measure_variants` builds one
segmentor (:func:`~.models.build_segmentor_to_time`), fuses it, keeps a float32 copy as
the reference (TF32 off) and prepares a copy as the benchmark does (fp16 channels-last
with ``--fp16 --channels-last``). Each variant (call path, named in
:data:`repseg.fast_inference.VARIANTS`) runs on its own deep copy of that prepared model:

- ``mmseg predict``: ``model.predict(inputs)``, what the plain benchmark times;
- ``predictor``: :class:`~repseg.fast_inference.SegmentationPredictor` without options
  (the same work minus mmseg's per-image ``SegDataSample`` bookkeeping);
- ``+conv_relu``, ``+factored_psp``, ``+resize_argmax``, ``+cuda_graph``: one option each;
- ``all``: the four together; with ``compile_model`` also ``+compile_model`` and
  ``all + compile_model`` (minutes of compiling for a big model).

Timing: :func:`~.timing.time_calls` over all variants, ``rounds`` rounds of ``iters``
synchronized calls each, so every ratio compares variants of the same run. Each
variant's labels are compared with the float32 reference's on the same input
(``label_agreement``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from ..fast_inference import COMPILE_VARIANTS, VARIANTS, SegmentationPredictor, SpeedOptions
from ..inference import check_device, labels_of, prepare_for_inference
from .benchmark import BenchmarkSettings, Target, target_record
from .models import build_segmentor_to_time, model_copy, smooth_inputs
from .record import SpeedRecord, add_ratios
from .timing import environment, time_calls


class VariantsError(UserError, ValueError):
    """An unknown variant name or an impossible timing request."""


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
    records: list = field(default_factory=list)  # SpeedRecord, one per variant
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        result = asdict(self)
        result['records'] = [record.to_dict() for record in self.records]
        return result


def call_path(model: nn.Module, inputs: torch.Tensor, options: Optional[SpeedOptions]
              ) -> tuple[Callable[[], torch.Tensor], nn.Module, dict]:
    """The timed call of a variant (labels of ``inputs``), the model it runs and the
    outcomes of its options. The options change the model in place: give it a copy."""
    if options is None:
        def predict():
            with torch.inference_mode():
                return labels_of(model.predict(inputs))

        return predict, model, {}
    predictor = SegmentationPredictor(model, inputs, options)
    return (lambda: predictor(inputs)), predictor.model, predictor.report.to_dict()


def check_variant_names(names: Sequence[str]) -> None:
    known = {**VARIANTS, **COMPILE_VARIANTS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise VariantsError(f'unknown variants {unknown}; choose from {list(known)}')


def measure_variants(config, settings: BenchmarkSettings, rounds: int = 2,
                     compile_model: bool = False, variants: Optional[Sequence[str]] = None,
                     checkpoint=None, cfg_options: Optional[dict] = None,
                     seed: int = 0) -> VariantsResult:
    """Time every variant (module doc) of ``config``; ``variants`` picks some by name."""
    table = {**VARIANTS, **(COMPILE_VARIANTS if compile_model else {})}
    names = list(variants) if variants else list(table)
    check_variant_names(names)
    if rounds < 1 or settings.iters < 1 or settings.warmup < 0:
        raise VariantsError(f'need rounds >= 1, iters >= 1 and warmup >= 0, got rounds '
                            f'{rounds}, iters {settings.iters}, warmup {settings.warmup}')
    device = settings.device
    check_device(device)
    settings = replace(settings, tf32=False)  # the reference is plain fp32
    settings.configure()
    inputs = smooth_inputs(settings.batch, settings.shape, device, seed)
    reference = build_segmentor_to_time(config, checkpoint, device, cfg_options, seed=seed)
    prepare_for_inference(reference, fuse=True)
    with torch.inference_mode():
        expected = labels_of(reference.predict(inputs))
    counts = torch.bincount(expected.flatten().cpu())
    prepared = prepare_for_inference(model_copy(reference), fuse=True, fp16=settings.fp16,
                                     channels_last=settings.channels_last)
    del reference

    targets, build_seconds, agreements = [], [], []
    for name in names:
        options = {**VARIANTS, **COMPILE_VARIANTS}[name]
        start = time.perf_counter()
        run, model, outcomes = call_path(model_copy(prepared), inputs, options)
        build_seconds.append(time.perf_counter() - start)
        agreements.append(float((run() == expected).double().mean()))
        targets.append(Target(name, model, run, None, 'segmentation', str(config),
                              fused=True, outcomes=outcomes))
    timings = time_calls([t.run for t in targets], settings.warmup, settings.iters, device,
                         rounds=rounds, name=str(config))
    result = VariantsResult(
        config=str(config), shape=list(settings.shape), batch=settings.batch,
        dtype=settings.dtype_name, channels_last=settings.channels_last, device=device,
        reference_classes=int((counts > 0).sum()),
        reference_top_class_share=float(counts.max() / counts.sum()),
        environment=environment(device))
    for name, target, timing, build_s, agreement in zip(names, targets, timings,
                                                         build_seconds, agreements):
        record: SpeedRecord = target_record(target, settings, timing)
        options = {**VARIANTS, **COMPILE_VARIANTS}[name]
        record.variant, record.options = name, options.names() if options else []
        record.label_agreement, record.build_s = agreement, build_s
        result.records.append(record)
    add_ratios(result.records)
    return result
