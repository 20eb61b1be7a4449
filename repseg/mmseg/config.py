"""Load a config for ``tools/train.py`` / ``tools/test.py`` and adapt it to this machine
and to repseg's guards, before anything is checked or built.

* work dir: the argument, else the config's, else ``work_dirs/<config stem>``; refused
  at once if a file stands in its way;
* no CUDA: SyncBN becomes BN and processes talk over gloo (REFERENCES section 6);
  several processes: the DDP wrapper of :mod:`repseg.mmseg.ddp`;
* checkpoints: :class:`~repseg.mmseg.hooks.AtomicCheckpointHook` (atomic, finite only);
* training: :class:`~repseg.mmseg.nonfinite.NonFiniteLossHook` stops at a NaN/Inf loss;
* data: the loaders of :mod:`repseg.mmseg.frame_guard` name a frame that fails mid-run;
* a ``train_cfg.max_iters`` override carries the schedule and intervals with it
  (:func:`follow_max_iters`).

The checks themselves live in :mod:`repseg.mmseg.preflight`, running in
:mod:`repseg.mmseg.runner`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from ..errors import UserError
from ..fileio import check_output_location
from .builder import use_plain_bn
from .config_file import apply_cfg_options, read_config
from .config_values import value_problems
from .ddp import DeviceAwareDDP
from .frame_guard import guard_frame_loading
from .hooks import AtomicCheckpointHook
from .nonfinite import NonFiniteLossHook

#: Modules the Runner imports (``custom_imports``) for the types this module puts in.
GUARD_MODULES = ('repseg', 'repseg.mmseg.hooks', 'repseg.mmseg.ddp',
                 'repseg.mmseg.nonfinite', 'repseg.mmseg.frame_guard')


class ConfigError(UserError, ValueError):
    """A config that cannot run as asked."""


def prepare_config(config, cfg_options: Optional[Mapping] = None,
                   work_dir: Optional[str] = None, launcher: str = 'none') -> Config:
    """Load ``config`` with overrides and adapt it to this machine and to repseg's tools
    (see the module docstring)."""
    cfg = read_config(config)
    max_iters = (cfg.get('train_cfg') or {}).get('max_iters')
    apply_cfg_options(cfg, cfg_options)
    follow_max_iters(cfg, max_iters, cfg_options or {})
    _fit_persistent_workers(cfg)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or str(Path('work_dirs') / Path(config).stem)
    check_output_location(cfg.work_dir, is_folder=True, what='work dir')
    if not torch.cuda.is_available():
        _adapt_to_cpu(cfg)
    if launcher != 'none':
        _use_device_aware_ddp(cfg)
    checkpoint_hook = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint_hook and checkpoint_hook.get('type') in ('CheckpointHook',
                                                           'mmengine.CheckpointHook'):
        checkpoint_hook['type'] = AtomicCheckpointHook.__name__
    _add_loss_guard(cfg, config)
    guard_frame_loading(cfg)
    imports = cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    imports['imports'] = list(dict.fromkeys([*imports.get('imports', []), *GUARD_MODULES]))
    cfg.custom_imports = imports
    return cfg


def _fit_persistent_workers(cfg: Config) -> None:
    """``persistent_workers=True`` with ``num_workers=0`` (a demo config made single
    process) is a ``ValueError`` of torch's DataLoader: there is no worker to keep, so
    the flag goes, with a log line."""
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if (isinstance(loader, Mapping) and loader.get('num_workers') == 0
                and loader.get('persistent_workers') is True):
            loader['persistent_workers'] = False
            print_log(f'{name}: num_workers=0 loads in the main process, so '
                      'persistent_workers=True (kept worker processes) is set to False',
                      logger='current')


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


def _add_loss_guard(cfg: Config, config) -> None:
    """Add :class:`NonFiniteLossHook` (``limit`` from the top-level config key
    ``nonfinite_loss_limit``, default 1) unless the config already has one. The key's rule
    is in :data:`repseg.mmseg.config_values.RULES`; a value from ``--cfg-options`` was
    checked as it was applied, one from the config file (``config``) is checked here, as
    the pre-flight checks of a run read only the sections the run builds."""
    hooks = list(cfg.get('custom_hooks') or [])
    if any(isinstance(h, Mapping) and h.get('type') == NonFiniteLossHook.__name__
           for h in hooks):
        return
    problems = value_problems(cfg, ['nonfinite_loss_limit'])
    if problems:
        raise ConfigError('\n\n'.join(f'{config}: {p}' for p in problems))
    limit = cfg.get('nonfinite_loss_limit', 1)
    cfg.custom_hooks = [*hooks, dict(type=NonFiniteLossHook.__name__, limit=limit)]


def follow_max_iters(cfg: Config, old_max_iters: Any, options: Mapping) -> list[str]:
    """After ``train_cfg.max_iters`` changed from ``old_max_iters``, move what was tied
    to the old length: the ``end`` of each iteration-based scheduler that ended there
    (when it begins before the new end), and a validation or checkpoint interval longer
    than the new run. Keys set in ``options`` are the user's choice and stay. Logs one
    line; returns the keys changed."""
    new = (cfg.get('train_cfg') or {}).get('max_iters')
    if old_max_iters is None or new is None or new == old_max_iters:
        return []
    changed = []
    schedulers = cfg.get('param_scheduler') or []
    schedulers = [schedulers] if isinstance(schedulers, Mapping) else schedulers
    for index, scheduler in enumerate(schedulers):
        key = f'param_scheduler.{index}.end'
        if (scheduler.get('by_epoch', True) is False and scheduler.get('end') == old_max_iters
                and scheduler.get('begin', 0) < new and not _overridden(key, options)):
            scheduler['end'] = new
            changed.append(f"{key} ({scheduler.get('type', 'scheduler')})")
    intervals = [('train_cfg.val_interval', cfg.train_cfg),
                 ('default_hooks.checkpoint.interval',
                  (cfg.get('default_hooks') or {}).get('checkpoint'))]
    for key, section in intervals:
        leaf = key.rsplit('.', 1)[1]
        if section and isinstance(section.get(leaf), int) and section[leaf] > new \
                and not _overridden(key, options):
            section[leaf] = new
            changed.append(key)
    if changed:
        print_log(f"train_cfg.max_iters {old_max_iters} -> {new}: {', '.join(changed)} "
                  'follow it (set them with --cfg-options to choose otherwise)',
                  logger='current')
    return changed


def _overridden(key: str, options: Mapping) -> bool:
    """Whether ``options`` sets ``key`` itself or a section holding it."""
    parts = key.split('.')
    return any('.'.join(parts[:n]) in options for n in range(1, len(parts) + 1))


def enable_amp(cfg: Config) -> None:
    """Switch the optimizer wrapper to mmengine's ``AmpOptimWrapper`` (dynamic loss scale)."""
    if not torch.cuda.is_available():
        raise ConfigError(
            "--amp needs a CUDA GPU: mmengine's AmpOptimWrapper (float16 autocast with a "
            'loss scaler) runs on CUDA, NPU or MLU only. Train in float32 on this machine '
            '(leave out --amp).')
    optim = cfg.optim_wrapper
    if optim.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        print_log('AmpOptimWrapper is already set in the config', logger='current')
        return
    optim['type'] = 'AmpOptimWrapper'
    optim.setdefault('loss_scale', 'dynamic')
