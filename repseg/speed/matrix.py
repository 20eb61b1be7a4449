"""The benchmark matrix of issue 9, measured in one process so that ratios are fair.

Groups (batch 1 at 1024x2048 unless said; one record each, see :class:`Key`):

* ``fp32``: PSPNet R-50-D8, R-101-D8 and RepVGG B1g2, B1g2-fast, B2, B2-fast, the RepVGG
  ones train-time and fused; float32 with TF32 on.
* ``fp16cl``: the same in float16 channels-last (matmul pyramid pooling).
* ``paper``: the fused RepVGG models and the ResNets under the paper's protocol
  (Table 8: batch 16, 713x713, float32, TF32 off).
* ``options``: fused B2 and R-101-D8 in fp16 channels-last through the call paths of
  :mod:`repseg.fast_inference` (:data:`ROLE_VARIANTS`: the tensor-only predictor, each
  speed option alone for B2, all of them). (No record with ``cudnn.benchmark`` off: torch
  looks up cuDNN's plan cache before it reads the flag, so in one process such a record
  replays the timed plans of the same shapes, and measuring it first would hand its
  heuristic plans to the fp16 records.)
  ``torch.compile`` is :func:`run_compiled`, separate because compiling takes minutes.
* ``backbone``: the fused B2 backbone alone in fp16 channels-last, and a dense fp16
  matmul: achieved TFLOP/s against the peak of the same GPU in the same run.
* ``training``: one training iteration (:mod:`.training`) of B2 and R-101-D8 at 713x713
  batch 2, AMP on CUDA, NCHW and channels-last.

Each model is built once (:func:`~.models.build_segmentor_to_time`) and copied per
prepared form (:class:`~.models.PreparedModels`). Records go to the JSON file after every measurement (written atomically), so a
run stopped by a time limit keeps what it measured; a failed measurement is recorded
under ``errors`` and the run goes on. Timing follows :func:`.benchmark.measure`
(warm-up, then synchronized calls), capped at ``max_seconds`` per measurement. The
records are :class:`~.record.SpeedRecord` s with ``group``, ``role``, ``label`` and
``variant`` (the call path) set.
"""
from __future__ import annotations

import gc
import json
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..analysis import count_flops
from ..fast_inference import COMPILE_VARIANTS, VARIANTS, SegmentationPredictor
from ..fileio import write_text_atomically
from .benchmark import BenchmarkSettings, Target, measure, segmentation_target
from .models import PreparedModels, build_segmentor_to_time, model_copy
from .record import SpeedRecord
from .timing import environment, time_calls
from .training import random_batch, training_step

GROUPS = ('fp32', 'fp16cl', 'paper', 'options', 'backbone', 'training')

# Variants (the call path of a record); the options group also uses the names of
# repseg.fast_inference.VARIANTS and COMPILE_VARIANTS, e.g. '+cuda_graph', 'all'.
PREDICT = 'predict'
BACKBONE = 'backbone'
AMP = 'train step'
AMP_CHANNELS_LAST = 'train step, channels-last'
#: fast_inference call paths timed per role on a GPU: every option alone for B2, the
#: predictor, CUDA graph and all options for R-101-D8 (the targets' "same tricks").
ROLE_VARIANTS = {'b2': ('predictor', '+conv_relu', '+factored_psp', '+resize_argmax',
                          '+cuda_graph', 'all'),
                   'r101': ('predictor', '+cuda_graph', 'all')}
#: The smoke's: no compiled resize (inductor's C++ build on a CPU takes minutes).
SMOKE_ROLE_VARIANTS = {'b2': ('predictor', '+conv_relu', '+factored_psp', '+cuda_graph'),
                         'r101': ('predictor',)}
#: torch.compile variants (run_compiled).
COMPILED_VARIANT = 'all + compile_model'


@dataclass(frozen=True)
class ModelSpec:
    """One model of the matrix: its role (how targets name it) and how to build it."""

    role: str
    label: str
    config: str
    cfg_options: tuple = ()  # (key, value) pairs for load_config

    @property
    def repvgg(self) -> bool:
        return self.role not in RESNET_ROLES


@dataclass(frozen=True)
class Key:
    """What one record measures."""

    group: str
    role: str
    variant: str = PREDICT
    fused: Optional[bool] = None


RESNET_ROLES = ('r50', 'r101')

#: The issue's models, in measuring order: the targets' models first.
FULL_MODELS = (
    ModelSpec('r101', 'R-101-D8', 'configs/pspnet_r101_d8.py'),
    ModelSpec('b2', 'B2', 'configs/pspnet_repvgg_b2.py'),
    ModelSpec('r50', 'R-50-D8', 'configs/pspnet_r50_d8.py'),
    ModelSpec('b1g2_fast', 'B1g2-fast', 'configs/pspnet_repvgg_b1g2_fast.py'),
    ModelSpec('b2_fast', 'B2-fast', 'configs/pspnet_repvgg_b2_fast.py'),
    ModelSpec('b1g2', 'B1g2', 'configs/pspnet_repvgg_b1g2.py'),
)

_TINY_REPVGG = (('model.backbone.arch', 'A0'), ('model.backbone.init_cfg', None),
                ('model.decode_head.in_channels', 1280), ('model.decode_head.channels', 32),
                ('model.auxiliary_head.in_channels', 192),
                ('model.auxiliary_head.channels', 16))
_TINY_RESNET = (('model.backbone.depth', 18), ('model.decode_head.in_channels', 512),
                ('model.decode_head.channels', 32), ('model.auxiliary_head.in_channels', 256),
                ('model.auxiliary_head.channels', 16))


def _tiny(spec: ModelSpec, train_shape) -> ModelSpec:
    """The same config shrunk for the CPU smoke: RepVGG-A0 or ResNet-18, narrow heads."""
    tiny = _TINY_RESNET if spec.role in RESNET_ROLES else _TINY_REPVGG
    size = (('model.data_preprocessor.size', tuple(train_shape)),)
    return replace(spec, label=spec.label + ' (tiny)', cfg_options=tiny + size)


@dataclass(frozen=True)
class MatrixPlan:
    """Models, shapes and timing of one matrix run (:func:`full_plan`, :func:`smoke_plan`)."""

    device: str
    smoke: bool
    models: tuple
    shape: tuple = (1024, 2048)
    paper_batch: int = 16
    paper_shape: tuple = (713, 713)
    train_batch: int = 2
    train_shape: tuple = (713, 713)
    warmup: int = 3
    iters: int = 30
    max_seconds: Optional[float] = 0.75
    paper_warmup: int = 2
    paper_iters: int = 10
    paper_max_seconds: Optional[float] = 1.5
    matmul_size: int = 8192
    option_variants: dict = field(default_factory=lambda: dict(ROLE_VARIANTS))
    training_roles: tuple = ('b2', 'r101')
    backbone_role: str = 'b2'
    count_model_flops: bool = True  # GFLOPs of every fused/ResNet model at `shape`
    threads: Optional[int] = None  # CPU threads for torch (the smoke: 1, steady on 2 cores)
    calibration_shape: tuple = (128, 256)  # the random batch that sets BN statistics

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == 'cuda'

    def spec(self, role: str) -> ModelSpec:
        return next(spec for spec in self.models if spec.role == role)

    def settings(self, group: str) -> BenchmarkSettings:
        """How the records of ``group`` are timed."""
        common = dict(device=self.device, count_flops=False, warmup=self.warmup,
                      iters=self.iters, max_seconds=self.max_seconds, threads=self.threads)
        if group == 'paper':
            return BenchmarkSettings(
                shape=self.paper_shape, batch=self.paper_batch, tf32=False,
                **{**common, 'warmup': self.paper_warmup, 'iters': self.paper_iters,
                   'max_seconds': self.paper_max_seconds})
        if group == 'training':
            return BenchmarkSettings(shape=self.train_shape, batch=self.train_batch, **common)
        half = group in ('fp16cl', 'options', 'backbone')
        return BenchmarkSettings(shape=self.shape, batch=1, fp16=half, channels_last=half,
                                 **common)

    def describe(self) -> str:
        """One paragraph: what a run of this plan measures (for the dry run and logs)."""
        names = ', '.join(spec.label for spec in self.models)
        return (f"{'CPU smoke' if self.smoke else 'full'} matrix on {self.device}: {names}; "
                f'fp32 and fp16 channels-last at batch 1 {self.shape[0]}x{self.shape[1]}, '
                f'paper protocol batch {self.paper_batch} at '
                f'{self.paper_shape[0]}x{self.paper_shape[1]}, training at batch '
                f'{self.train_batch} {self.train_shape[0]}x{self.train_shape[1]}; '
                f'{self.warmup} warm-up calls, up to {self.iters} timed calls or '
                f'{self.max_seconds} s per record; dense matmul {self.matmul_size}^3')


def full_plan(device: str = 'cuda') -> MatrixPlan:
    """The issue's matrix (about 3 minutes on an H100)."""
    return MatrixPlan(device=device, smoke=False, models=FULL_MODELS)


def smoke_plan(device: str = 'cpu') -> MatrixPlan:
    """Every code path of the matrix on tiny models and inputs, in seconds on a CPU."""
    train_shape = (32, 32)
    return MatrixPlan(
        device=device, smoke=True, models=tuple(_tiny(s, train_shape) for s in FULL_MODELS),
        shape=(32, 64), paper_batch=2, paper_shape=(24, 24), train_batch=2,
        train_shape=train_shape, warmup=1, iters=1, max_seconds=None, paper_warmup=1,
        paper_iters=1, paper_max_seconds=None, matmul_size=256, count_model_flops=False,
        threads=1, calibration_shape=(32, 64), option_variants=dict(SMOKE_ROLE_VARIANTS))


def plan_keys(spec: ModelSpec, plan: MatrixPlan) -> Iterator[Key]:
    """The records of one model, in measuring order."""
    fused_states = (False, True) if spec.repvgg else (None,)
    inference_fused = True if spec.repvgg else None
    for fused in fused_states:
        yield Key('fp32', spec.role, PREDICT, fused)
    yield Key('paper', spec.role, PREDICT, inference_fused)
    for fused in reversed(fused_states):
        yield Key('fp16cl', spec.role, PREDICT, fused)
    for variant in plan.option_variants.get(spec.role, ()):
        yield Key('options', spec.role, variant, inference_fused)
    if spec.role == plan.backbone_role:
        yield Key('backbone', spec.role, BACKBONE, inference_fused)
    if spec.role in plan.training_roles:
        yield Key('training', spec.role, AMP, False if spec.repvgg else None)
        # oneDNN (torch's CPU convolutions) corrupts memory in the weight gradient of a 1x1
        # stride-2 NHWC conv with 3 input channels, RepVGG's stem (oneDNN issue 6035).
        if plan.cuda or not spec.repvgg:
            yield Key('training', spec.role, AMP_CHANNELS_LAST, False if spec.repvgg else None)


# ------------------------------------------------------------------------------- targets

def _image(settings: BenchmarkSettings) -> torch.Tensor:
    """A random normalized float32 batch on the device (what predict and the predictor
    take)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(settings.batch, 3, *settings.shape, generator=generator).to(
        settings.device)


def _name(spec: ModelSpec, key: Key) -> str:
    state = {True: ' fused', False: ' train-time', None: ''}[key.fused]
    return f'{spec.label}{state}, {key.variant}'


def build_target(key: Key, models: PreparedModels, spec: ModelSpec,
                 plan: MatrixPlan) -> Target:
    """The timed call of ``key`` on a prepared form of the model (also what profiling
    runs)."""
    settings = plan.settings(key.group)
    model = models.get(bool(key.fused), settings.fp16, settings.channels_last)
    if key.variant == PREDICT:
        target = segmentation_target(spec.config, settings, fuse=bool(key.fused), model=model)
        target.name = _name(spec, key)
        return target
    if key.variant in VARIANTS or key.variant in COMPILE_VARIANTS:
        options = {**VARIANTS, **COMPILE_VARIANTS}[key.variant]
        inputs = _image(settings)
        # options change the model in place: a copy of the prepared variant each
        predictor = SegmentationPredictor(model_copy(model), inputs, options)
        return Target(_name(spec, key), predictor.model, lambda: predictor(inputs), None,
                      'segmentation', spec.config, spec.label, key.fused,
                      outcomes=predictor.report.to_dict())
    if key.variant == BACKBONE:
        dtype = torch.float16 if settings.fp16 else torch.float32
        x = torch.randn(settings.batch, 3, *settings.shape, device=settings.device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last if settings.channels_last
                         else torch.contiguous_format)
        backbone = model.backbone

        def run():
            with torch.inference_mode():
                return backbone(x)

        return Target(_name(spec, key), backbone, run, backbone, 'backbone', spec.config,
                      spec.label, key.fused, flops_shape=settings.shape)
    if key.variant in (AMP, AMP_CHANNELS_LAST):
        model = model_copy(models.base)  # training changes the weights: a fresh copy
        batch = random_batch(settings.batch, settings.shape, settings.device)
        step = training_step(model, batch, amp=plan.cuda,
                             channels_last=key.variant == AMP_CHANNELS_LAST)
        return Target(_name(spec, key), model, step, None, 'training', spec.config,
                      spec.label, key.fused)
    raise ValueError(f'unknown variant {key.variant!r}')


# ----------------------------------------------------------------------------- measuring

def _measure_key(key: Key, models: PreparedModels, spec: ModelSpec,
                 plan: MatrixPlan) -> SpeedRecord:
    settings = plan.settings(key.group)
    target = build_target(key, models, spec, plan)
    settings.configure()
    record = measure(target, settings)
    record.group, record.role, record.label, record.variant = (key.group, key.role,
                                                               spec.label, key.variant)
    record.fused = key.fused
    record.amp = key.group == 'training' and plan.cuda
    if key.variant == BACKBONE:
        record.gflops = count_flops(target.flops_model, settings.shape)
        record.tflops = 2 * record.gflops * record.fps / 1e3
    return record


def dense_matmul_tflops(plan: MatrixPlan) -> dict:
    """Achieved TFLOP/s of an ``n x n x n`` float16 matmul (the GPU's dense fp16 peak in
    practice), on random data, median of the timed calls."""
    n = plan.matmul_size
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(plan.device, torch.float16)
            for _ in range(2))
    [timing] = time_calls([lambda: torch.mm(a, b)], warmup=3, iters=20, device=plan.device,
                          max_seconds=1.0, memory=False, name=f'dense fp16 matmul {n}^3')
    times = timing.seconds
    median = sorted(times)[len(times) // 2]
    return dict(n=n, dtype='float16', median_ms=1e3 * median,
                tflops=2 * n ** 3 / median / 1e12, iters=len(times))


@dataclass
class MatrixResult:
    """What :func:`run_matrix` writes (``to_dict`` is the JSON)."""

    plan: dict
    environment: dict
    records: list = field(default_factory=list)  # SpeedRecord
    matmul: Optional[dict] = None
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    finished: bool = False

    def to_dict(self) -> dict:
        result = asdict(self)
        result['records'] = [record.to_dict() for record in self.records]
        return result

    def save(self, out: Optional[Path], start: float) -> None:
        """Stamp the elapsed seconds since ``start`` and write ``out`` (if any) atomically."""
        self.seconds = round(time.perf_counter() - start, 1)
        if out is not None:
            write_text_atomically(out, json.dumps(self.to_dict(), indent=1) + '\n')


def _error(result: MatrixResult, where: dict, error: BaseException, log) -> None:
    message = f'{type(error).__name__}: {error}'
    result.errors.append(dict(where, error=message[:2000]))
    log(f'FAILED {where}: {message}\n{traceback.format_exc()}')


def _free(device: str) -> None:
    """Release the last record's model: predictors hold reference cycles (and CUDA graph
    memory pools), which only the cyclic collector frees."""
    gc.collect()
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run_matrix(plan: MatrixPlan, out: Optional[Path] = None,
               log: Callable[[str], None] = print) -> MatrixResult:
    """Measure every key of ``plan`` (and the dense matmul peak); write ``out`` after
    each record. Returns the result (``finished`` is False only if interrupted)."""
    start = time.perf_counter()
    result = MatrixResult(plan=asdict(plan), environment=environment(plan.device))

    def save():
        result.save(out, start)

    log(plan.describe())
    plan.settings('fp32').configure()
    # Everything imported so far lives as long as the process: keep it out of the garbage
    # collections that CPU memory measurements start with (a full one took a second).
    gc.freeze()
    try:
        result.matmul = dense_matmul_tflops(plan)
        log(f"dense fp16 matmul: {result.matmul['tflops']:.1f} TFLOP/s")
    except Exception as error:  # noqa: BLE001  (recorded; the matrix goes on)
        _error(result, dict(group='backbone', variant='dense matmul'), error, log)
    save()
    for spec in plan.models:
        try:
            models = PreparedModels(build_segmentor_to_time(
                spec.config, None, plan.device, dict(spec.cfg_options), plan.calibration_shape))
        except Exception as error:  # noqa: BLE001
            _error(result, dict(role=spec.role, variant='build'), error, log)
            save()
            continue
        for key in plan_keys(spec, plan):
            try:
                record = _measure_key(key, models, spec, plan)
                result.records.append(record)
                log(f'[{time.perf_counter() - start:6.1f} s] {key.group:8s} {record.name}: '
                    f'{record.fps:.2f} img/s, median {record.latency_ms_median:.1f} ms')
            except Exception as error:  # noqa: BLE001
                _error(result, asdict(key), error, log)
            _free(plan.device)
            save()
        if plan.count_model_flops:
            _add_flops(result, models, spec, plan, log)
            save()
        del models
        _free(plan.device)
    result.finished = True
    save()
    return result


def _add_flops(result: MatrixResult, models: PreparedModels, spec: ModelSpec,
               plan: MatrixPlan, log) -> None:
    """GFLOPs of the inference model (fused for RepVGG) at the main shape, filled into
    this model's records at that shape (TFLOP/s from their img/s)."""
    try:
        gflops = count_flops(models.get(spec.repvgg, False, False), plan.shape)
    except Exception as error:  # noqa: BLE001
        _error(result, dict(role=spec.role, variant='flops'), error, log)
        return
    for record in result.records:  # not the options: factored_psp does less work
        if record.role == spec.role and record.group in ('fp32', 'fp16cl') \
                and record.fused is not False:
            record.gflops = gflops
            record.tflops = 2 * gflops * record.fps / 1e3


def run_compiled(plan: MatrixPlan, out: Optional[Path] = None,
                 log: Callable[[str], None] = print) -> MatrixResult:
    """``torch.compile`` of the predictor with every speed option (fp16 channels-last) for
    the option models.

    Kept apart from :func:`run_matrix`: compiling takes minutes. The first (compiling)
    call is a warm-up call and is not timed.
    """
    start = time.perf_counter()
    result = MatrixResult(plan=asdict(plan), environment=environment(plan.device))
    for role in plan.option_variants:
        spec = plan.spec(role)
        key = Key('options', role, COMPILED_VARIANT, True if spec.repvgg else None)
        try:
            models = PreparedModels(build_segmentor_to_time(
                spec.config, None, plan.device, dict(spec.cfg_options), plan.calibration_shape))
            result.records.append(_measure_key(key, models, spec, plan))
            log(f'{result.records[-1].name}: {result.records[-1].fps:.2f} img/s')
            del models
        except Exception as error:  # noqa: BLE001
            _error(result, asdict(key), error, log)
        _free(plan.device)
        result.save(out, start)
    result.finished = True
    result.save(out, start)
    return result


def load_matrix(path: Path) -> dict:
    """A matrix JSON written by :func:`run_matrix` (possibly partial)."""
    return json.loads(Path(path).read_text())

