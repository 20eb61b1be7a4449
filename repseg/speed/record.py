"""The one record of a timed call, and its JSON: what ``--json`` and ``matrix.json`` hold.

Every timing of repseg (segmentors, classifiers, the pooling op, the CPU backends, the
fast-inference call paths, the matrix) ends in a :class:`SpeedRecord`, made from a
:class:`~.timing.Timing` by :func:`make_record`, so fps, latencies and ratios are computed
in one place. The JSON object of a record is flat: its fields, with ``environment``
spread in; the fields of the matrix and of the call-path comparison appear only in the
records that have them.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
from mmengine.logging import print_log

from ..fileio import write_text_atomically
from .timing import Timing

#: Fields written only when set: the matrix's (``group`` ... ``amp``) and the call-path
#: comparison's (``options`` ... ``build_s``).
OPTIONAL_FIELDS = ('group', 'role', 'label', 'variant', 'amp', 'options', 'outcomes',
                   'build_s')


@dataclass
class SpeedRecord:
    """One measured call.

    Fields: ``name`` (display name), ``config`` (segmentation config path, else None),
    ``arch`` (backbone/classifier name), ``task`` ('segmentation', 'classification',
    'pooling', 'backbone', 'training'), ``fused`` (RepVGG blocks re-parameterized; None
    for models without them), ``dtype``, ``channels_last``, ``batch``, ``shape`` ([H, W]),
    ``device``, ``backend``, ``fps`` (images/s over all timed calls), ``latency_ms_median``,
    ``latency_ms_p90``, ``latency_ms_min`` (per call), ``peak_mem_mb``, ``gflops`` (per
    image, 1 multiply-add = 1 FLOP), ``tflops`` (achieved, 1 multiply-add = 2 FLOPs),
    ``params_m`` (millions), ``tf32`` (None off CUDA), ``fast_pooling`` (PSP pyramid
    pooling in the matmul form; None for models without a PSP head), ``warmup``, ``iters``
    (timed calls), ``fps_ratio`` (fps over the first record's), ``speedup_vs_train_time``
    (fused fps over its train-time twin's), ``label_agreement`` (fraction of pixels
    labelled as by the run's reference model), the environment (``torch_version``,
    ``device_name``, ``cpu_threads``, ``cuda_version``, ``cudnn_version``), and where
    set: ``group``, ``role``, ``label``, ``variant`` (the call path), ``amp`` (matrix),
    ``options`` and ``outcomes`` (fast-inference options asked and what took effect),
    ``build_s`` (seconds to build the call path).
    """

    name: str
    config: Optional[str]
    arch: Optional[str]
    task: str
    fused: Optional[bool]
    dtype: str
    channels_last: bool
    batch: int
    shape: list
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
    group: Optional[str] = None
    role: Optional[str] = None
    label: Optional[str] = None
    variant: Optional[str] = None
    amp: Optional[bool] = None
    options: Optional[list] = None
    outcomes: Optional[dict] = None
    build_s: Optional[float] = None
    environment: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        record = asdict(self)
        for name in OPTIONAL_FIELDS:
            if record[name] is None:
                del record[name]
        record.update(record.pop('environment'))
        return record


def make_record(timing: Timing, batch: int, warmup: int, gflops: Optional[float] = None,
                **fields_) -> SpeedRecord:
    """The record of one call from its :class:`~.timing.Timing`: fps over all timed calls
    (``batch * calls / total seconds``), latency statistics per call, TFLOP/s from
    ``gflops``; ``fields_`` are the record's other fields."""
    times = timing.seconds
    fps = batch * len(times) / sum(times)
    record = SpeedRecord(
        batch=batch, fps=fps, latency_ms_median=1e3 * statistics.median(times),
        latency_ms_p90=1e3 * float(np.percentile(np.asarray(times), 90)),
        latency_ms_min=1e3 * min(times), peak_mem_mb=timing.peak_mem_mb, gflops=gflops,
        tflops=None if gflops is None else 2 * gflops * fps / 1e3, warmup=warmup,
        iters=len(times), **fields_)
    print_log(f'{record.name}: {fps:.2f} img/s, median {record.latency_ms_median:.1f} ms',
              logger='current')
    return record


def add_ratios(records: list) -> list:
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


def records_to_json(records: Sequence[SpeedRecord], path: os.PathLike | str) -> None:
    """Write the records (atomically) as a JSON list of flat objects."""
    write_text_atomically(path, json.dumps([r.to_dict() for r in records], indent=2) + '\n')
