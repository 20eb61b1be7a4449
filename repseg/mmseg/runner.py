"""The library behind ``tools/train.py`` and ``tools/test.py``.

Every run is checked before mmengine's Runner is built: config arguments, arch name,
dataset folders and a sample of its files, pretrained weights, the checkpoint to test. A
wrong path or a typo then fails at once with a message saying what to do, instead of
minutes later inside a data-loader worker (or never: a mistyped backbone argument would
otherwise be a ``TypeError`` deep in the registry, a checkpoint of another arch would load
with warnings only).

The config is adapted to the machine (REFERENCES section 6): without CUDA, SyncBN becomes
BN, and several processes train over gloo, which needs the process group started before the
Runner (mmengine's own launcher calls ``torch.cuda.set_device``) and the DDP wrapper of
:mod:`repseg.mmseg.ddp`. Checkpoints are written atomically (:mod:`repseg.mmseg.hooks`).
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log

from ..checkpoint import CheckpointError
from ..data.validate import DatasetError, check_cityscapes_split
from ..errors import UserError
from ..models.arch import canonical_arch_name
from .backbone import PretrainedNotFoundError, RepVGGBackbone, check_pretrained_exists
from .builder import (load_config, load_segmentor_weights,
                      read_segmentor_checkpoint, segmentor_of, use_plain_bn)
from .ddp import DeviceAwareDDP
from .hooks import AtomicCheckpointHook, CityscapesLabelIdsHook, PerClassIoUMetric

#: Files decoded per dataset split by the pre-flight check (all are checked to exist).
SAMPLE_FILES = 8
#: Per-run metrics of ``tools/test.py``, in its work dir.
METRICS_FILE = 'metrics.json'
#: Keys of model component configs that are not constructor arguments of the component.
NON_ARGUMENT_KEYS = ('type', '_scope_')
#: Sub-configs consumed by helpers (build_norm_layer, ...), not checked against a class.
HELPER_CFG_KEYS = ('norm_cfg', 'act_cfg', 'conv_cfg', 'init_cfg', 'train_cfg', 'test_cfg',
                   'dcn', 'plugins', 'sampler')

_run_ids = itertools.count()


class PreflightError(UserError, ValueError):
    """A run that cannot work as configured; the message says why and what to do."""


#: Errors that are the user's to fix: tools print their message and exit with status 2.
USER_ERRORS = (UserError, FileNotFoundError)


@contextlib.contextmanager
def exit_on_user_error(status: int = 2) -> Iterator[None]:
    """For command-line tools: print a user error as ``error: ...`` on stderr (no
    traceback) and exit with ``status``; any other exception propagates as usual."""
    try:
        yield
    except USER_ERRORS as error:
        sys.stderr.write(f'error: {error}\n')
        sys.stderr.flush()
        raise SystemExit(status) from None


# Config preparation ----------------------------------------------------------------

def prepare_config(config, cfg_options: Optional[Mapping] = None,
                   work_dir: Optional[str] = None, launcher: str = 'none') -> Config:
    """Load ``config`` with overrides and adapt it to this machine and to repseg's tools.

    * ``work_dir``: the argument, else the config's, else ``work_dirs/<config stem>``.
    * No CUDA: SyncBN -> BN (logged), gloo as the process-group backend.
    * Distributed (``launcher`` not 'none'): :class:`~repseg.mmseg.ddp.DeviceAwareDDP`.
    * mmengine's ``CheckpointHook`` -> :class:`~repseg.mmseg.hooks.AtomicCheckpointHook`.
    """
    if not Path(config).is_file():
        raise PreflightError(f'config file not found: {config}')
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or str(Path('work_dirs') / Path(config).stem)
    if not torch.cuda.is_available():
        _adapt_to_cpu(cfg)
    if launcher != 'none':
        _use_device_aware_ddp(cfg)
    checkpoint_hook = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint_hook and checkpoint_hook.get('type') in ('CheckpointHook',
                                                           'mmengine.CheckpointHook'):
        checkpoint_hook['type'] = AtomicCheckpointHook.__name__
    imports = cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    imports['imports'] = list(dict.fromkeys([*imports.get('imports', []), 'repseg',
                                             'repseg.mmseg.hooks', 'repseg.mmseg.ddp']))
    cfg.custom_imports = imports
    return cfg


def _adapt_to_cpu(cfg: Config) -> None:
    before = cfg.model.to_dict()
    use_plain_bn(cfg)
    if cfg.model.to_dict() != before:
        print_log('no CUDA device: using BN instead of SyncBN (multi-process SyncBN needs '
                  'CUDA; the checkpoint keys are the same)', logger='current')
    env = cfg.get('env_cfg') or {}
    env.setdefault('dist_cfg', {})['backend'] = 'gloo'
    cfg.env_cfg = env


def _use_device_aware_ddp(cfg: Config) -> None:
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if wrapper.get('type', 'MMDistributedDataParallel') not in (
            'MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel'):
        return  # FSDP or another wrapper chosen on purpose
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper['type'] = DeviceAwareDDP.__name__
    cfg.model_wrapper_cfg = wrapper


def enable_amp(cfg: Config) -> None:
    """Switch the optimizer wrapper to mmengine's ``AmpOptimWrapper`` (dynamic loss scale)."""
    if not torch.cuda.is_available():
        raise PreflightError(
            "--amp needs a CUDA GPU: mmengine's AmpOptimWrapper (float16 autocast with a "
            'loss scaler) runs on CUDA, NPU or MLU only. Train in float32 on this machine '
            '(leave out --amp).')
    optim = cfg.optim_wrapper
    if optim.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        print_log('AmpOptimWrapper is already set in the config', logger='current')
        return
    optim['type'] = 'AmpOptimWrapper'
    optim.setdefault('loss_scale', 'dynamic')


# Pre-flight checks ----------------------------------------------------------------------

def preflight(cfg: Config, mode: str, config_name: str = 'the config') -> None:
    """Check a prepared config before the Runner is built; raise :class:`PreflightError`
    listing every problem found (one paragraph each).

    ``mode`` 'train' checks the arguments of what training builds (:func:`config_problems`),
    the train and val datasets and the pretrained backbone file; 'test' checks the model,
    test loop, hooks and test dataset.
    """
    if mode not in ('train', 'test'):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    problems = config_problems(cfg, mode)
    problems += dataset_problems(cfg, _loaders(cfg, mode), config_name)
    if mode == 'train':
        problems += pretrained_problems(cfg.model)
    if problems:
        raise PreflightError('\n\n'.join(dict.fromkeys(problems)))


def _registries():
    import mmseg.registry as registries
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return registries


def _accepted_arguments(cls: type) -> Optional[set[str]]:
    """Constructor argument names of ``cls``, following ``**kwargs`` up the MRO; None when
    some ``**kwargs`` goes on to a class that accepts anything."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        if klass in (nn.Module, object):
            return None
        params = inspect.signature(init).parameters.values()
        names.update(p.name for p in params
                     if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != 'self')
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def _suggest(word: str, choices) -> str:
    matches = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ''


def component_problems(node: Any, path: str, registry, recurse: bool = False) -> Iterator[str]:
    """Unknown types, unknown constructor arguments (typos such as
    ``model.backbone.archh``) and unknown RepVGG arch names in a config dict that names
    a class of ``registry`` by ``type``. With ``recurse`` (the model), nested dicts are
    components of the same registry (except helper configs such as ``norm_cfg``)."""
    if isinstance(node, (list, tuple)) and recurse:
        for index, item in enumerate(node):
            yield from component_problems(item, f'{path}.{index}', registry, recurse)
        return
    if not isinstance(node, Mapping):
        return
    type_name = node.get('type')
    if isinstance(type_name, str):
        cls = registry.get(type_name)
        if cls is None:
            yield (f'{path}.type: {type_name!r} is not a registered {registry.name} type'
                   + _suggest(type_name, registry.module_dict))
        else:
            accepted = _accepted_arguments(cls) if inspect.isclass(cls) else None
            for key in node:
                if accepted is not None and key not in accepted and key not in NON_ARGUMENT_KEYS:
                    yield (f'{path}.{key}: {type_name} has no argument {key!r}'
                           + _suggest(key, accepted)
                           + f" (its arguments: {', '.join(sorted(accepted))})")
            if inspect.isclass(cls) and issubclass(cls, RepVGGBackbone):
                try:
                    canonical_arch_name(node.get('arch', 'B2'))
                except (ValueError, TypeError) as error:
                    yield f'{path}.arch: {error}'
    if recurse:
        for key, value in node.items():
            if key not in HELPER_CFG_KEYS:
                yield from component_problems(value, f'{path}.{key}', registry, recurse)


def config_problems(cfg: Config, mode: str) -> list[str]:
    """:func:`component_problems` for every part of ``cfg`` that ``mode`` builds."""
    reg = _registries()
    loaders = _loaders(cfg, mode)
    parts = [(cfg.model, 'model', reg.MODELS, True)]
    loops = ('train_cfg', 'val_cfg') if mode == 'train' else ('test_cfg',)
    parts += [(cfg.get(name), name, reg.LOOPS, False) for name in loops]
    if mode == 'train':
        optim = cfg.get('optim_wrapper') or {}
        parts += [(optim, 'optim_wrapper', reg.OPTIM_WRAPPERS, False),
                  (optim.get('optimizer'), 'optim_wrapper.optimizer', reg.OPTIMIZERS, False)]
        schedulers = cfg.get('param_scheduler') or []
        schedulers = [schedulers] if isinstance(schedulers, Mapping) else schedulers
        parts += [(s, f'param_scheduler.{i}', reg.PARAM_SCHEDULERS, False)
                  for i, s in enumerate(schedulers)]
    parts += [(hook, f'default_hooks.{name}', reg.HOOKS, False)
              for name, hook in (cfg.get('default_hooks') or {}).items()]
    parts += [(hook, f'custom_hooks.{i}', reg.HOOKS, False)
              for i, hook in enumerate(cfg.get('custom_hooks') or [])]
    for loader in loaders:
        parts += [(dataset, path, reg.DATASETS, False)
                  for path, dataset in _leaf_datasets(cfg[loader]['dataset'], f'{loader}.dataset')]
    return [problem for part in parts for problem in component_problems(*part)]


def _loaders(cfg: Config, mode: str) -> list[str]:
    names = ['train_dataloader', 'val_dataloader'] if mode == 'train' else ['test_dataloader']
    if mode == 'train' and not cfg.get('val_cfg'):
        names.remove('val_dataloader')
    return [n for n in names if cfg.get(n) and cfg[n].get('dataset')]


def _leaf_datasets(dataset: Mapping, path: str) -> Iterator[tuple[str, Mapping]]:
    """The datasets that read files, below RepeatDataset / ConcatDataset wrappers."""
    if 'datasets' in dataset:
        for index, item in enumerate(dataset['datasets']):
            yield from _leaf_datasets(item, f'{path}.datasets.{index}')
    elif isinstance(dataset.get('dataset'), Mapping):
        yield from _leaf_datasets(dataset['dataset'], f'{path}.dataset')
    else:
        yield path, dataset


def _default_argument(cls: type, name: str, fallback: Any) -> Any:
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is not None:
            param = inspect.signature(init).parameters.get(name)
            if param is not None and param.default is not param.empty:
                return param.default
    return fallback


def dataset_problems(cfg: Config, loader_names: Sequence[str],
                     config_name: str = 'the config') -> list[str]:
    """Check the folders of each dataloader's dataset and decode a sample of its files.

    Cityscapes-style datasets get :func:`repseg.data.validate.check_cityscapes_split`
    (every image has its label; the first :data:`SAMPLE_FILES` pairs decode, match in size
    and hold trainIds only); other datasets only need their data root to exist.
    """
    from mmseg.datasets import CityscapesDataset
    from mmseg.registry import DATASETS

    missing_roots: dict[str, list[str]] = {}
    problems, seen = [], set()
    for loader_name in loader_names:
        loader = cfg.get(loader_name)
        if not loader or not loader.get('dataset'):
            continue
        for path, dataset in _leaf_datasets(loader['dataset'], f'{loader_name}.dataset'):
            root = str(dataset.get('data_root', '') or '')
            if root and not Path(root).is_dir():
                missing_roots.setdefault(root, []).append(path)
                continue
            prefix = dataset.get('data_prefix') or {}
            cls = DATASETS.get(dataset.get('type', ''))
            key = (root, prefix.get('img_path', ''), prefix.get('seg_map_path', ''))
            if key in seen or cls is None or not issubclass(cls, CityscapesDataset):
                continue
            seen.add(key)
            try:
                check_cityscapes_split(
                    root, key[1], key[2],
                    img_suffix=dataset.get('img_suffix', _default_argument(cls, 'img_suffix', '')),
                    seg_suffix=dataset.get('seg_map_suffix',
                                           _default_argument(cls, 'seg_map_suffix', '')),
                    max_files=SAMPLE_FILES, progress=False)
            except DatasetError as error:
                problems.append(f'{path} (in {config_name}): {error}')
    for root, paths in missing_roots.items():
        try:
            check_cityscapes_split(root)
            message = f"data root '{root}' does not exist."
        except DatasetError as error:  # the data module's help on getting the data
            message = str(error)
        keys = ', '.join(f'{p}.data_root' for p in paths)
        problems.insert(0, f'{message} (set in {config_name} as {keys})')
    return problems


def pretrained_problems(model_cfg: Mapping) -> list[str]:
    """Missing ``Pretrained`` checkpoint files anywhere in the model config."""
    problems = []

    def walk(node, path):
        if isinstance(node, Mapping):
            init_cfg = node.get('init_cfg')
            try:
                check_pretrained_exists(init_cfg)
            except PretrainedNotFoundError as error:
                problems.append(f'{path}.init_cfg: {error}')
            for key, value in node.items():
                if key != 'init_cfg':
                    walk(value, f'{path}.{key}')

    walk(model_cfg, 'model')
    pretrained = model_cfg.get('pretrained')
    if isinstance(pretrained, str) and '://' not in pretrained and not Path(pretrained).is_file():
        problems.append(f"model.pretrained: file '{pretrained}' not found; download it or "
                        'train from scratch with --cfg-options model.pretrained=None')
    return problems


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
    ranks other than 0 also log to ``<log dir>/rank<N>.log``.
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
    if runner.distributed and runner.rank != 0:
        os.makedirs(runner.log_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(runner.log_dir, f'rank{runner.rank}.log'))
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter('%(asctime)s - %(levelname)s - %(message)s'))
        runner.logger.addHandler(handler)
        runner.logger.info(f'rank {runner.rank} of {runner.world_size} logging here')
    return runner


def run_train(config, work_dir: Optional[str] = None, resume: bool = False, amp: bool = False,
          cfg_options: Optional[Mapping] = None, launcher: str = 'none'):
    """``tools/train.py``: check, build the Runner, train. Returns the Runner.

    Args:
        config: config file path.
        work_dir: where logs and checkpoints go (default ``work_dirs/<config stem>``).
        resume: continue from the latest checkpoint in ``work_dir`` (``last_checkpoint``),
            with optimizer, scheduler and iteration.
        amp: mixed precision (CUDA only).
        cfg_options: ``--cfg-options`` overrides.
        launcher: 'none', 'pytorch' (torchrun) or 'slurm'.
    """
    cfg = prepare_config(config, cfg_options, work_dir, launcher)
    cfg.resume = resume
    if amp:
        enable_amp(cfg)
    preflight(cfg, 'train', str(config))
    init_distributed(launcher)
    runner = build_runner(cfg)
    runner.train()
    return runner


def checked_weights(cfg: Config, checkpoint, loaded: Optional[tuple] = None) -> dict:
    """The state dict of ``cfg``'s segmentor with ``checkpoint`` loaded strictly
    (:func:`load_segmentor_weights`), built on the CPU before the Runner, so that a
    checkpoint that does not fit fails at once."""
    from .builder import build_segmentor

    probe = build_segmentor(cfg)
    load_segmentor_weights(probe, checkpoint, loaded)
    return segmentor_of(probe).state_dict()


def _test_config(cfg: Config, out: Optional[str], show_dir: Optional[str], tta: bool) -> None:
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
        cfg.custom_hooks = [*(cfg.get('custom_hooks') or []),
                            dict(type=CityscapesLabelIdsHook.__name__, out_dir=out)]
    cfg.load_from = None  # loaded by checked_weights, strictly


def run_test(config, checkpoint, work_dir: Optional[str] = None, out: Optional[str] = None,
         show_dir: Optional[str] = None, tta: bool = False, fp16: bool = False,
         cfg_options: Optional[Mapping] = None, launcher: str = 'none') -> dict:
    """``tools/test.py``: check, load the checkpoint strictly, evaluate.

    Logs mmseg's per-class table (IoU, Acc) and writes ``<work_dir>/metrics.json``
    (summary, per-class values, config and checkpoint) on rank 0.

    Args:
        out: also write Cityscapes ``*_labelIds.png`` predictions to this folder.
        show_dir: save drawn predictions there (mmseg's visualization hook).
        tta: multi-scale + flip test-time augmentation (the config's ``tta_pipeline``).
        fp16: fuse RepVGG blocks and run in float16
            (:func:`repseg.inference.prepare_for_inference`).

    Returns:
        ``{'mIoU': ..., 'mAcc': ..., 'aAcc': ..., 'per_class': {...}}`` (percent).
    """
    cfg = prepare_config(config, cfg_options, work_dir, launcher)
    loaded = read_segmentor_checkpoint(checkpoint)
    _test_config(cfg, out, show_dir, tta)
    preflight(cfg, 'test', str(config))
    weights = checked_weights(cfg, checkpoint, loaded)
    del loaded
    init_distributed(launcher)
    runner = build_runner(cfg)
    segmentor_of(runner.model).load_state_dict(weights)
    del weights
    if fp16:
        from ..inference import prepare_for_inference

        prepare_for_inference(segmentor_of(runner.model), fuse=True, fp16=True)
        print_log('testing the fused model in float16', logger='current')
    metrics = dict(runner.test())
    per_class = next((m.per_class for m in runner.test_loop.evaluator.metrics
                      if isinstance(m, PerClassIoUMetric)), None)
    if per_class is not None:
        metrics['per_class'] = per_class
    if runner.rank == 0:
        path = Path(runner.work_dir) / METRICS_FILE
        record = dict(config=str(config), checkpoint=str(checkpoint), tta=tta, fp16=fp16,
                      **{k: round(float(v), 4) if k != 'per_class' else v
                         for k, v in metrics.items()})
        path.write_text(json.dumps(record, indent=2) + '\n')
        summary = '  '.join(f'{k} {float(metrics[k]):.2f}' for k in ('mIoU', 'mAcc', 'aAcc')
                            if k in metrics)
        print_log(f'{summary}; metrics written to {path}', logger='current')
    return metrics
