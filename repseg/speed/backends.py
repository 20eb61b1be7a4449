"""One segmentor on the CPU through several backends, timed interleaved in one run.

``tools/benchmark.py CONFIG [CHECKPOINT] --int8 [MODEL.onnx ...] [--bf16]`` times, side by
side: PyTorch fp32 (fused), optionally PyTorch bfloat16, ONNX Runtime fp32 (the fused
export) and ONNX Runtime INT8 (the given ``.onnx`` files, or the export quantized here on
generated calibration images: speed does not depend on the weights, accuracy does).

Every backend computes the same function on the same ``batch x 3 x H x W`` image: the
graph of :class:`repseg.export.SegmentorForExport` (normalisation, network, resize to the
input) and the arg-max, inside PyTorch, after ONNX Runtime (whose graphs output logits, as
``tools/quantize.py`` writes them; the arg-max over the logits is timed). The calls are
interleaved (one call of each backend per round, ``iters`` rounds after ``warmup``
calls of each), so a change in the machine's load hits every backend alike and the
ratios hold even when the absolute times drift. PyTorch uses
``torch.set_num_threads(threads)``, ONNX Runtime ``intra_op_num_threads`` with the same
count. ``label_agreement`` is the fraction of pixels labelled as PyTorch fp32 labels them.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import print_log

from ..analysis import count_flops
from ..export import (SegmentorForExport, export_onnx, image_batch, prepare_for_export,
                      synthetic_image)
from ..inference import prepare_for_inference
from ..onnx_backend import OnnxGraph, OnnxModelError, is_onnx_file
from .benchmark import (BenchmarkSettings, Target, arch_of, check_onnx_runtime_settings,
                        target_record)
from .models import build_segmentor_to_time
from .record import SpeedRecord, add_ratios
from .timing import time_calls

#: Generated images the INT8 model made here is calibrated on.
SPEED_CALIBRATION_IMAGES = 2


@dataclass
class _Backend:
    name: str
    backend: str
    dtype: str
    run: Callable[[], np.ndarray]


def _torch_backend(name: str, dtype: str, segmentor, batch: np.ndarray) -> _Backend:
    wrapper = SegmentorForExport(segmentor, labels=True).eval()
    inputs = torch.from_numpy(batch)

    def run():
        with torch.inference_mode():
            return wrapper(inputs).numpy()

    return _Backend(name, 'pytorch', dtype, run)


def _onnx_backend(name: str, dtype: str, path, batch: np.ndarray, threads: int) -> _Backend:
    graph = OnnxGraph(path, threads)
    return _Backend(name, 'onnxruntime', dtype, lambda: graph.predict_labels(batch))


def _quantize_for_speed(fp32_path: Path, shape: Sequence[int], batch: int) -> Path:
    """The export quantized as tools/quantize.py does, calibrated on generated images."""
    from ..quantization import QuantSettings
    from ..quantization import qdq

    pre, out = fp32_path.with_name('pre.onnx'), fp32_path.with_name('int8.onnx')
    qdq.preprocess(fp32_path, pre)

    class Reader:
        def __init__(self):
            self.images = iter([image_batch(synthetic_image(shape, seed)).repeat(batch, 0)
                                for seed in range(SPEED_CALIBRATION_IMAGES)])

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {'image': image}

    qdq.quantize(pre, out, Reader(), QuantSettings())
    return out


def check_int8_models(paths: Sequence) -> None:
    """Each ``--int8`` file must exist and be an ``.onnx`` model (a checkpoint given
    there would reach ONNX Runtime's protobuf parser and end in its traceback)."""
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f'INT8 model not found: {path}')
        if not is_onnx_file(path):
            raise OnnxModelError(
                f'--int8 {path}: expected an .onnx model written by tools/quantize.py, got '
                f'a {Path(path).suffix or "suffix-less"} file. A PyTorch checkpoint goes in '
                'the CHECKPOINT position (tools/benchmark.py CONFIG CHECKPOINT --int8 '
                'quantizes its export here), or quantize it first: tools/quantize.py '
                'CONFIG CHECKPOINT OUT.onnx')


def compare_backends(config, settings: BenchmarkSettings, checkpoint=None,
                     int8_models: Sequence = (), quantize: bool = True, bf16: bool = False,
                     cfg_options: Optional[dict] = None) -> list[SpeedRecord]:
    """Time one config's fused segmentor through each backend (see the module docstring).

    Args:
        int8_models: INT8 ``.onnx`` files to time (their input size must accept
            ``settings.shape``).
        quantize: without ``int8_models``, quantize the fp32 export here.
        bf16: also time PyTorch in bfloat16.

    Returns:
        One record per backend, PyTorch fp32 first (``fps_ratio`` is relative to it).
    """
    check_onnx_runtime_settings(settings, 'the backend comparison (--int8/--bf16)')
    check_int8_models(int8_models)
    settings.configure()
    threads = settings.threads or torch.get_num_threads()
    model = build_segmentor_to_time(config, checkpoint, 'cpu', cfg_options)
    prepare_for_inference(model, fuse=True, fast_pooling=True)
    batch = image_batch(synthetic_image(settings.shape)).repeat(settings.batch, axis=0)
    backends = [_torch_backend('PyTorch fp32', 'float32', prepare_for_export(model), batch)]
    if bf16:
        half = prepare_for_inference(copy.deepcopy(model), fuse=False, fp16=True,
                                     half_dtype=torch.bfloat16, fast_pooling=True)
        backends.append(_torch_backend('PyTorch bf16', 'bfloat16', half, batch))
    with tempfile.TemporaryDirectory(prefix='repseg_backends_') as tmp:
        fp32_path = Path(tmp) / 'fp32.onnx'
        export_onnx(model, fp32_path, settings.shape, batch=settings.batch)
        backends.append(_onnx_backend('ONNX Runtime fp32', 'float32', fp32_path, batch,
                                      threads))
        paths = list(int8_models)
        if not paths and quantize:
            paths = [_quantize_for_speed(fp32_path, settings.shape, settings.batch)]
        for path in paths:
            label = 'ONNX Runtime INT8' + (f' ({Path(path).name})' if int8_models else '')
            backends.append(_onnx_backend(label, 'int8', path, batch, threads))
    stem = Path(str(config)).stem
    reference = backends[0].run()
    agreement = [float((backend.run().astype(np.int64) == reference).mean())
                 for backend in backends]
    print_log(f'{stem}: {len(backends)} backends, {settings.warmup} warm-up calls each and '
              f'{settings.iters} timed rounds, interleaved, {threads} thread(s)',
              logger='current')
    timings = time_calls([b.run for b in backends], settings.warmup, 1, 'cpu',
                         rounds=settings.iters, memory=False, name=stem)
    gflops = count_flops(model, settings.shape) if settings.count_flops else None
    records = []
    for backend, timing, alike in zip(backends, timings, agreement):
        target = Target(f'{stem} {backend.name}', model, backend.run, None, 'segmentation',
                        str(config), arch_of(model), True, backend.backend, dtype=backend.dtype)
        records.append(target_record(target, settings, timing, gflops))
        records[-1].label_agreement = alike
    return add_ratios(records)


def int8_speedups(records: Sequence[SpeedRecord]) -> list[tuple[str, float]]:
    """``(name, fps ratio)`` of each INT8 record over the ONNX Runtime fp32 record."""
    fp32 = next((r for r in records if r.backend == 'onnxruntime' and r.dtype == 'float32'),
                None)
    if fp32 is None:
        return []
    return [(r.name, r.fps / fp32.fps) for r in records if r.dtype == 'int8']
