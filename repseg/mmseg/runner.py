"""The library behind ``tools/train.py`` and ``tools/test.py``: prepare, check, run.

One config goes through three places, in order:

1. :mod:`repseg.mmseg.config` loads it with the ``--cfg-options`` and adapts it to the
   machine and to repseg's guards (BN without CUDA, atomic checkpoints, the NaN guard,
   checked loaders, the schedule following ``max_iters``);
2. :mod:`repseg.mmseg.preflight` checks everything that can fail later (config keys,
   every frame, pretrained files, the checkpoint to test);
3. this module starts distributed processes, builds mmengine's Runner and runs it,
   turning a frame that fails mid-run into a message naming the file and the iteration.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterator, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log

from ..fileio import write_text_atomically
from ..logs import quiet_logger
from ..models.summary import norm_layer_summary
from .builder import checked_weights, read_segmentor_checkpoint, segmentor_of
from .config import enable_amp, prepare_config
from .frame_guard import FrameLoadError
from .hooks import CityscapesLabelIdsHook, PerClassIoUMetric
from .preflight import PreflightError, config_problems, preflight
from .tensorboard import add_tensorboard
from .workdir import check_resume, work_dir_lock

__all__ = ['PreflightError', 'build_runner', 'checked_weights', 'config_problems',
           'configure_test', 'enable_amp', 'init_distributed', 'preflight', 'prepare_config',
           'run_test', 'run_train']

#: Per-run metrics of ``tools/test.py``, in its work dir.
METRICS_FILE = 'metrics.json'

_run_ids = itertools.count()

# Distributed setup ------------------------------------------------------------------

def _slurm_to_torch_env() -> None:
    """Translate SLURM's task variables into the ones ``init_process_group`` reads."""
    env = os.environ
    env.setdefault('RANK', env['SLURM_PROCID'])
    env.setdefault('WORLD_SIZE', env['SLURM_NTASKS'])
    env.setdefault('LOCAL_RANK', env['SLURM_LOCALID'])
    env.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in env:
        hosts = subprocess.run(['scontrol', 'show', 'hostnames', env['SLURM_NODELIST']],
                               capture_output=True, text=True, check=True).stdout.split()
        env['MASTER_ADDR'] = hosts[0]


def init_distributed(launcher: str) -> None:
    """Start the gloo process group for CPU ranks (mmengine then skips its own start).

    With CUDA nothing is done here: mmengine's launcher sets the device and starts NCCL.
    """
    if launcher == 'none' or torch.cuda.is_available() or dist.is_initialized():
        return
    if launcher == 'slurm':
        try:
            _slurm_to_torch_env()
        except KeyError as missing:
            raise PreflightError(f'--launcher slurm: environment variable {missing} is not '
                                 'set; start the job with srun (tools/slurm_train.sh)') from None
    elif launcher != 'pytorch':
        raise PreflightError(f"--launcher {launcher} is not supported without CUDA; use "
                             "'pytorch' (tools/dist_train.sh) or 'slurm'")
    missing = [name for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if name not in os.environ]
    if missing:
        raise PreflightError(f"--launcher {launcher} expects {', '.join(missing)} in the "
                             'environment, as torchrun sets them; start several processes '
                             'with tools/dist_train.sh CONFIG NUM_PROCESSES')
    dist.init_process_group(backend='gloo')
    print_log(f'rank {dist.get_rank()} of {dist.get_world_size()}: CPU process group (gloo)',
              logger='current')


# Runner --------------------------------------------------------------------------------

def build_runner(cfg: Config):
    """Build mmengine's Runner from a prepared config.

    Each run gets its own experiment and visualizer name, so several runs in one process
    (tests, notebooks) do not share a log file or a visualizer. A model that cannot be
    built from the config is reported as a :class:`PreflightError`. On distributed runs,
    ranks other than 0 also log to ``<log dir>/rank<N>.log``. mmengine's known-harmless
    log notices are dropped (:func:`repseg.logs.quiet_logger`).
    """
    from mmengine.runner import Runner

    run_id = next(_run_ids)
    name = Path(cfg.filename or 'run').stem + (f'_{run_id}' if run_id else '')
    cfg.experiment_name = cfg.get('experiment_name') or name
    if cfg.get('visualizer'):
        cfg.visualizer['name'] = f'{cfg.experiment_name}_visualizer'
    try:
        runner = Runner.from_cfg(cfg)
    except (TypeError, ValueError, KeyError) as error:
        message = str(error).strip("'\"")
        if 'class `' not in message:  # not a registry build failure: a bug, keep the traceback
            raise
        raise PreflightError(f'cannot build the model from {cfg.filename}: {message}') from error
    quiet_logger(runner.logger)
    if runner.distributed and runner.rank != 0:
        os.makedirs(runner.log_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(runner.log_dir, f'rank{runner.rank}.log'))
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter('%(asctime)s - %(levelname)s - %(message)s'))
        runner.logger.addHandler(handler)
        runner.logger.info(f'rank {runner.rank} of {runner.world_size} logging here')
    return runner


@contextlib.contextmanager
def frame_failures_named(runner) -> Iterator[None]:
    """Add where the run was to a :class:`FrameLoadError` from any data-loader worker:
    the training iteration whose batch failed, the validation, or the test."""
    try:
        yield
    except FrameLoadError as error:
        stage = runner.message_hub.get_info('loop_stage')
        if stage == 'train':
            where = f'while loading the batch of training iteration {runner.iter + 1}'
            then = ('then continue from the last checkpoint with --resume'
                    if runner.message_hub.get_info('last_ckpt') else 'then train again')
        else:
            where = (f'while validating after training iteration {runner.iter}'
                     if stage == 'val' else 'while testing')
            then = 'then run again'
        raise FrameLoadError(
            f'{error} ({where}). The pre-flight check decodes every frame unless '
            '--skip-data-check is given, so the file was changed or removed during the run '
            f'or not checked: restore or fix it, {then}.') from None


def run_train(config, work_dir: Optional[str] = None, resume: bool = False, amp: bool = False,
              cfg_options: Optional[Mapping] = None, launcher: str = 'none',
              skip_data_check: bool = False, tensorboard: bool = False):
    """``tools/train.py``: prepare, check, build the Runner, train. Returns the Runner.

    Args:
        config: config file path.
        work_dir: where logs and checkpoints go (default ``work_dirs/<config stem>``).
        resume: continue from the latest checkpoint in ``work_dir`` (``last_checkpoint``),
            with optimizer, scheduler and iteration; checked first
            (:func:`repseg.mmseg.workdir.check_resume`). One training per work dir at a
            time (:func:`repseg.mmseg.workdir.work_dir_lock`).
        amp: mixed precision (CUDA only).
        cfg_options: ``--cfg-options`` overrides.
        launcher: 'none', 'pytorch' (torchrun) or 'slurm'.
        skip_data_check: do not decode every frame before training
            (as ``skip_data_check=True`` in the config).
        tensorboard: also log scalars for TensorBoard (:mod:`repseg.mmseg.tensorboard`).
    """
    cfg = prepare_config(config, cfg_options, work_dir, launcher)
    cfg.resume = resume
    if skip_data_check:
        cfg.skip_data_check = True
    if amp:
        enable_amp(cfg)
    if tensorboard:
        add_tensorboard(cfg)
    preflight(cfg, 'train', str(config))
    with work_dir_lock(cfg.work_dir):
        if resume:
            check_resume(cfg)
        init_distributed(launcher)
        runner = build_runner(cfg)
        print_log(f'normalization layers: {norm_layer_summary(runner.model)}',
                  logger='current')
        with frame_failures_named(runner):
            runner.train()
    return runner


def configure_test(cfg: Config, out: Optional[str] = None, show_dir: Optional[str] = None,
                   tta: bool = False) -> None:
    """Set up ``cfg`` (prepared) as ``tools/test.py`` runs it: mmseg's IoU metric keeping
    its per-class table (:class:`PerClassIoUMetric`), ``--out`` label files,
    ``--show-dir`` drawings of every image, test-time augmentation; weights are loaded
    by :func:`checked_weights`, not by the Runner."""
    if show_dir:  # every image, not mmseg's default of every 50th
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer['save_dir'] = show_dir
    if tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    evaluator = cfg.test_evaluator
    if isinstance(evaluator, Mapping) and evaluator.get('type') in ('IoUMetric', 'mmseg.IoUMetric'):
        evaluator['type'] = PerClassIoUMetric.__name__
    if out:
        data_root = (cfg.test_dataloader.get('dataset') or {}).get('data_root')
        cfg.custom_hooks = [*(cfg.get('custom_hooks') or []),
                            dict(type=CityscapesLabelIdsHook.__name__, out_dir=out,
                                 data_root=data_root)]
    cfg.load_from = None  # loaded by checked_weights, strictly


def prepare_for_test(segmentor: nn.Module, fuse: bool, fp16: bool,
                     bf16: bool = False) -> Optional[bool]:
    """Fuse the RepVGG blocks unless ``fuse`` is False (same labels, faster); float16 or
    bfloat16 if asked (:func:`repseg.inference.prepare_for_inference`). Returns whether
    the blocks are fused now, read from the model (a ``*_deploy.py`` config builds them
    fused whatever ``fuse`` says), or None for a model without RepVGG blocks."""
    from ..inference import half_precision_dtype, prepare_for_inference
    from ..models.reparam import fused_block_count

    dtype = half_precision_dtype(fp16, bf16)
    prepare_for_inference(segmentor, fuse=fuse, fp16=dtype is not None,
                          half_dtype=dtype or torch.float16)
    fused_blocks, blocks = fused_block_count(segmentor)
    if not blocks:
        return None
    fused = fused_blocks == blocks
    model = ('fused model (--no-fuse: train-time branches)' if fused
             else 'train-time branches (--no-fuse)')
    precision = 'bfloat16' if bf16 else 'float16' if fp16 else 'float32'
    print_log(f"testing the {model} in {precision}", logger='current')
    return fused


def _use_onnx_model(cfg: Config, onnx_file, launcher: str, fp16: bool, bf16: bool) -> None:
    """Test an ``.onnx`` file: ONNX Runtime in one process, as it was exported."""
    from ..onnx_backend import refuse_precision_flags, use_onnx_model

    if launcher != 'none':
        raise PreflightError(f'{onnx_file}: an ONNX model is tested in one process on the '
                             'CPU; drop --launcher (tools/dist_test.sh)')
    refuse_precision_flags(onnx_file, fp16, bf16)
    use_onnx_model(cfg, onnx_file)


def run_test(config, checkpoint, work_dir: Optional[str] = None, out: Optional[str] = None,
             show_dir: Optional[str] = None, tta: bool = False, fp16: bool = False,
             cfg_options: Optional[Mapping] = None, launcher: str = 'none',
             skip_data_check: bool = False, fuse: bool = True, bf16: bool = False) -> dict:
    """``tools/test.py``: prepare, check, load the checkpoint strictly, evaluate.

    Logs mmseg's per-class table (IoU, Acc) and writes ``<work_dir>/metrics.json``
    (summary, per-class values, config and checkpoint) on rank 0.

    Args:
        checkpoint: a segmentor checkpoint, or an ``.onnx`` file (fp32 or INT8), run by
            ONNX Runtime on the CPU (:mod:`repseg.onnx_backend`).
        out: also write Cityscapes ``*_labelIds.png`` predictions to this folder.
        show_dir: save drawn predictions there (mmseg's visualization hook).
        tta: multi-scale + flip test-time augmentation (the config's ``tta_pipeline``).
        fp16: run in float16 (:func:`repseg.inference.prepare_for_inference`).
        skip_data_check: do not decode every test frame first.
        fuse: fuse every RepVGG block into one 3x3 conv before testing (same labels,
            faster); False tests the train-time branches.
        bf16: the same as ``fp16`` in bfloat16 (fast on CPUs with AMX or AVX512-BF16).

    Returns:
        ``{'mIoU': ..., 'mAcc': ..., 'aAcc': ..., 'per_class': {...}}`` (percent).
    """
    from ..inference import half_precision_dtype
    from ..onnx_backend import is_onnx_file

    half_precision_dtype(fp16, bf16)  # the pair is refused before anything is built
    onnx = is_onnx_file(checkpoint)
    cfg = prepare_config(config, cfg_options, work_dir, launcher)
    if skip_data_check:
        cfg.skip_data_check = True
    if onnx:
        _use_onnx_model(cfg, checkpoint, launcher, fp16, bf16)
    else:
        loaded = read_segmentor_checkpoint(checkpoint)
    configure_test(cfg, out, show_dir, tta)
    preflight(cfg, 'test', str(config))
    if not onnx:
        weights = checked_weights(cfg, checkpoint, loaded)
        del loaded
    init_distributed(launcher)
    runner = build_runner(cfg)
    if not onnx:
        segmentor_of(runner.model).load_state_dict(weights)
        del weights
        fused = prepare_for_test(segmentor_of(runner.model), fuse, fp16, bf16)
    with frame_failures_named(runner):
        metrics = dict(runner.test())
    per_class = next((m.per_class for m in runner.test_loop.evaluator.metrics
                      if isinstance(m, PerClassIoUMetric)), None)
    if per_class is not None:
        metrics['per_class'] = per_class
    if runner.rank == 0:
        path = Path(runner.work_dir) / METRICS_FILE
        record = dict(config=str(config), checkpoint=str(checkpoint), tta=tta, fp16=fp16,
                      fused=None if onnx else fused, bf16=bf16,
                      backend='onnxruntime' if onnx else 'pytorch',
                      **{k: round(float(v), 4) if k != 'per_class' else v
                         for k, v in metrics.items()})
        write_text_atomically(path, json.dumps(record, indent=2) + '\n')
        summary = '  '.join(f'{k} {float(metrics[k]):.2f}' for k in ('mIoU', 'mAcc', 'aAcc')
                            if k in metrics)
        print_log(f'{summary}; metrics written to {path}', logger='current')
    return metrics
