"""What is checked before a run: everything that can fail later is tried first.

* config keys: every component a run builds (model parts, dataloaders and their
  samplers, datasets, pipeline transforms, loops, optimizer wrapper and optimizer,
  schedulers, hooks, evaluators) has a registered type and only arguments that type
  accepts; misspellings get close matches (:func:`config_problems`); ``--cfg-options``
  keys are held to the same rule as they are applied (:func:`override_problems`);
* datasets: folders exist, every image has its label, and every frame decodes and fits
  the classes (:mod:`repseg.data.frame_check`, cached; ``skip_data_check`` leaves out
  the decoding);
* pretrained files exist (:func:`pretrained_problems`).

Reading (:mod:`repseg.mmseg.config_file`) and building (:mod:`repseg.mmseg.builder`)
import this module, never the other way round; a checkpoint to test is checked by
:func:`repseg.mmseg.builder.checked_weights`.

A wrong path or a typo then fails at once with a message saying what to do, instead of
minutes or hours later inside a data-loader worker (or never: a mistyped argument would
be a ``TypeError`` deep in a registry, a checkpoint of another arch would load with
warnings only).
"""
from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from torch.utils.data import DataLoader

from ..data.frame_check import FrameRules, default_cache_dir
from ..data.validate import DatasetError, check_cityscapes_split
from ..errors import UserError
from ..models.arch import canonical_arch_name
from .backbone import PretrainedNotFoundError, RepVGGBackbone, check_pretrained_exists
from .config_values import value_problems
from .frame_guard import default_argument, dataset_frame_rules, leaf_datasets

#: Keys of component configs that are not constructor arguments of the component.
NON_ARGUMENT_KEYS = ('type', '_scope_')
#: Sub-configs consumed by helpers (build_norm_layer, ...), not checked against a class.
HELPER_CFG_KEYS = ('norm_cfg', 'act_cfg', 'conv_cfg', 'init_cfg', 'train_cfg', 'test_cfg',
                   'dcn', 'plugins', 'sampler')
#: Keys mmengine's Runner takes out of a dataloader config before ``DataLoader(...)``.
DATALOADER_EXTRA_KEYS = ('num_batch_per_epoch', 'disable_subprocess_warning')
#: Classes whose ``**kwargs`` take nothing a config should set: CheckpointHook passes
#: them to ``Runner.save_checkpoint``, which has every one of its arguments set already,
#: so ``default_hooks.checkpoint.max_keep_ckpt`` would fail at the first save, hours in.
CLOSED_KWARGS = (CheckpointHook,)
#: The sections each mode builds.
SECTIONS = {
    'train': ('model', 'train_cfg', 'val_cfg', 'optim_wrapper', 'param_scheduler',
              'default_hooks', 'custom_hooks', 'train_dataloader', 'val_dataloader',
              'val_evaluator'),
    'test': ('model', 'test_cfg', 'default_hooks', 'custom_hooks', 'test_dataloader',
             'test_evaluator'),
}
ALL_SECTIONS = tuple(dict.fromkeys(SECTIONS['train'] + SECTIONS['test']))


class PreflightError(UserError, ValueError):
    """A run that cannot work as configured; the message says why and what to do."""


def preflight(cfg: Config, mode: str, config_name: str = 'the config') -> None:
    """Check a prepared config before the Runner is built; raise :class:`PreflightError`
    listing every problem found (one paragraph each).

    ``mode`` 'train' checks what training builds (:func:`config_problems`, values by
    :func:`repseg.mmseg.config_values.value_problems`), the train and val datasets and
    the pretrained backbone file; 'test' what testing builds and the test dataset.
    """
    if mode not in SECTIONS:
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    problems = config_problems(cfg, mode)
    problems += [f'{config_name}: {p}' for p in value_problems(cfg, SECTIONS[mode])]
    problems += dataset_problems(cfg, _loaders(cfg, mode), config_name)
    if mode == 'train':
        problems += pretrained_problems(cfg.model)
    if problems:
        raise PreflightError('\n\n'.join(dict.fromkeys(problems)))


# Config keys --------------------------------------------------------------------------

def _registries(scope: Optional[str] = None):
    """The registries a config of ``default_scope`` ``scope`` builds from: mmpretrain's
    for classification configs (``repseg.classification``), else mmseg's."""
    if scope == 'mmpretrain':
        import mmpretrain.registry as registries
        from mmpretrain.utils import register_all_modules
    else:
        import mmseg.registry as registries
        from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return registries


@dataclass(frozen=True)
class Component:
    """A config dict that builds one object: of registry ``kind`` by its ``type`` key, or
    of class ``kind`` itself (the dataloader); ``extra`` keys are taken out by the
    builder, not passed to the class."""

    path: str
    node: Mapping
    kind: Any
    extra: tuple = ()


def components(cfg: Config, sections: Sequence[str]) -> Iterator[Component]:
    """Every component of ``sections`` of ``cfg`` (see :data:`SECTIONS`)."""
    reg = _registries(cfg.get('default_scope'))
    for section in sections:
        node = cfg.get(section)
        if not node:
            continue
        if section == 'model':
            yield from _model_components(node, 'model', reg.MODELS)
        elif section.endswith('_dataloader'):
            yield from _dataloader_components(node, section, reg)
        elif section.endswith('_cfg'):
            yield Component(section, node, reg.LOOPS)
        elif section == 'optim_wrapper':
            yield Component(section, node, reg.OPTIM_WRAPPERS, ('constructor', 'paramwise_cfg'))
            yield Component(f'{section}.optimizer', node.get('optimizer') or {}, reg.OPTIMIZERS)
        elif section == 'default_hooks':
            for name, hook in node.items():
                yield Component(f'{section}.{name}', hook or {}, reg.HOOKS, ('priority',))
        else:
            kind, extra = {'param_scheduler': (reg.PARAM_SCHEDULERS, ('convert_to_iter_based',)),
                           'custom_hooks': (reg.HOOKS, ('priority',))}.get(
                               section, (reg.METRICS, ()))
            items = [node] if isinstance(node, Mapping) else node
            for index, item in enumerate(items):
                path = section if isinstance(node, Mapping) else f'{section}.{index}'
                yield Component(path, item, kind, extra)


def _model_components(node: Any, path: str, registry) -> Iterator[Component]:
    if isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            yield from _model_components(item, f'{path}.{index}', registry)
    elif isinstance(node, Mapping):
        yield Component(path, node, registry)
        for key, value in node.items():
            if key not in HELPER_CFG_KEYS:
                yield from _model_components(value, f'{path}.{key}', registry)


def _dataloader_components(loader: Mapping, path: str, reg) -> Iterator[Component]:
    yield Component(path, loader, DataLoader, DATALOADER_EXTRA_KEYS)
    for name in ('sampler', 'batch_sampler'):
        if isinstance(loader.get(name), Mapping):
            yield Component(f'{path}.{name}', loader[name], reg.DATA_SAMPLERS)
    if isinstance(loader.get('dataset'), Mapping):
        for dataset_path, dataset in leaf_datasets(loader['dataset'], f'{path}.dataset'):
            yield Component(dataset_path, dataset, reg.DATASETS)
            for transform_path, transform in _pipeline_items(dataset.get('pipeline') or [],
                                                             f'{dataset_path}.pipeline'):
                yield Component(transform_path, transform, reg.TRANSFORMS)


def _pipeline_items(pipeline, path: str) -> Iterator[tuple[str, Mapping]]:
    """Each transform dict with its key path, including those nested in TestTimeAug."""
    for index, item in enumerate(pipeline):
        here = f'{path}.{index}'
        if isinstance(item, (list, tuple)):
            yield from _pipeline_items(item, here)
        elif isinstance(item, Mapping):
            yield here, item
            for key, value in item.items():
                if isinstance(value, (list, tuple)):
                    yield from _pipeline_items(value, f'{here}.{key}')


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
        if klass in CLOSED_KWARGS or not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def _registered_names(registry) -> set[str]:
    """Type names ``registry`` finds: its own and its parents' (mmseg's schedulers
    registry holds PolyLRRatio; PolyLR is mmengine's)."""
    names: set[str] = set()
    while registry is not None:
        names.update(registry.module_dict)
        registry = registry.parent
    return names


def did_you_mean(word: str, choices, parent: str = '') -> str:
    """``"; did you mean 'a' or 'b'?"`` naming up to three of ``choices`` close to
    ``word`` (as ``parent.choice`` when ``parent`` is given), or ``''``: the one
    suggester of every config key and type message."""
    matches = difflib.get_close_matches(word, sorted(str(c) for c in choices), n=3,
                                        cutoff=0.6)
    prefix = parent + '.' if parent else ''
    return (f"; did you mean {' or '.join(repr(prefix + m) for m in matches)}?"
            if matches else '')


def component_problems(component: Component) -> Iterator[str]:
    """Unknown types, unknown constructor arguments (typos such as
    ``model.backbone.archh`` or ``train_dataloader.batch_sise``) and unknown RepVGG arch
    names in one component; each message starts with the key path."""
    node, path = component.node, component.path
    if not isinstance(node, Mapping):
        return
    if isinstance(component.kind, type):
        cls, type_name = component.kind, component.kind.__name__
    else:
        type_name = node.get('type')
        if not isinstance(type_name, str):
            return
        cls = component.kind.get(type_name)
        if cls is None:
            yield (f'{path}.type: {type_name!r} is not a registered {component.kind.name} type'
                   + did_you_mean(type_name, _registered_names(component.kind)))
            return
    accepted = _accepted_arguments(cls) if inspect.isclass(cls) else None
    if accepted is not None:
        for key in node:
            if key not in accepted and key not in NON_ARGUMENT_KEYS + component.extra:
                yield (f'{path}.{key}: {type_name} has no argument {key!r}'
                       + did_you_mean(key, accepted)
                       + f" (its arguments: {', '.join(sorted(accepted))})")
    if inspect.isclass(cls) and issubclass(cls, RepVGGBackbone):
        try:
            canonical_arch_name(node.get('arch', 'B2'))
        except (ValueError, TypeError) as error:
            yield f'{path}.arch: {error}'


def config_problems(cfg: Config, mode: str) -> list[str]:
    """:func:`component_problems` for every component that ``mode`` builds."""
    sections = [s for s in SECTIONS[mode]
                if not s.endswith('_dataloader') or s in _loaders(cfg, mode)]
    return [problem for component in components(cfg, sections)
            for problem in component_problems(component)]


def override_problems(cfg: Config, options: Mapping) -> list[str]:
    """Problems of ``--cfg-options`` keys once applied to ``cfg``: a new key that the
    component it lands in does not accept, or a ``type`` that is not registered (or
    does not take the component's other keys), in any section of any mode."""
    by_path = {c.path: c for c in components(cfg, ALL_SECTIONS)}
    problems = []
    for key in options:
        owner, _, leaf = key.rpartition('.')
        component = by_path.get(owner) or (by_path.get(key) if leaf == 'type' else None)
        if component is None:
            continue
        problems += [p for p in component_problems(component)
                     if leaf == 'type' or p.startswith(f'{key}:')]
    return list(dict.fromkeys(problems))


def _loaders(cfg: Config, mode: str) -> list[str]:
    names = ['train_dataloader', 'val_dataloader'] if mode == 'train' else ['test_dataloader']
    if mode == 'train' and not cfg.get('val_cfg'):
        names.remove('val_dataloader')
    return [n for n in names if cfg.get(n) and cfg[n].get('dataset')]


# Datasets ---------------------------------------------------------------------------

def _checks_frames() -> bool:
    """Whether this process decodes the frames: one process per machine (local rank 0)
    in distributed runs; the others start and wait for it."""
    return int(os.environ.get('LOCAL_RANK', '0')) == 0


def dataset_problems(cfg: Config, loader_names: Sequence[str],
                     config_name: str = 'the config') -> list[str]:
    """Check the folders of each dataloader's dataset and decode every frame.

    Cityscapes-style datasets get :func:`repseg.data.validate.check_cityscapes_split`
    (every image has its label; every pair decodes, matches in size, has 3 image
    channels and holds only the dataset's classes and ignore index), with verdicts
    cached under :func:`repseg.data.frame_check.default_cache_dir`. With
    ``skip_data_check=True`` in the config (``--skip-data-check``) frames are not
    decoded. Other datasets only need their data root to exist.
    """
    from mmseg.datasets import CityscapesDataset
    from mmseg.registry import DATASETS

    decode = not cfg.get('skip_data_check', False)
    if not decode:
        print_log('skipping the every-frame data check (--skip-data-check / '
                  'skip_data_check=True): a bad frame stops the run only when it is loaded',
                  logger='current')
    missing_roots: dict[str, list[str]] = {}
    problems, seen = [], set()
    for loader_name in loader_names:
        loader = cfg.get(loader_name)
        if not loader or not loader.get('dataset'):
            continue
        for path, dataset in leaf_datasets(loader['dataset'], f'{loader_name}.dataset'):
            root = str(dataset.get('data_root', '') or '')
            if root and not Path(root).is_dir():
                missing_roots.setdefault(root, []).append(path)
                continue
            prefix = dataset.get('data_prefix') or {}
            if not isinstance(prefix, Mapping):  # mmpretrain datasets: a folder name
                prefix = dict(img_path=prefix)
            cls = DATASETS.get(dataset.get('type', ''))
            key = (root, prefix.get('img_path', ''), prefix.get('seg_map_path', ''))
            if key in seen or cls is None or not issubclass(cls, CityscapesDataset):
                continue
            seen.add(key)
            rules = dataset_frame_rules(dataset) or FrameRules()
            try:
                check_cityscapes_split(
                    root, key[1], key[2],
                    img_suffix=dataset.get('img_suffix', default_argument(cls, 'img_suffix', '')),
                    seg_suffix=dataset.get('seg_map_suffix',
                                           default_argument(cls, 'seg_map_suffix', '')),
                    num_classes=rules.num_classes, ignore_index=rules.ignore_index,
                    color_type=rules.color_type,
                    max_files=None if decode and _checks_frames() else 0,
                    cache_dir=default_cache_dir())
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


# Weights ----------------------------------------------------------------------------

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
