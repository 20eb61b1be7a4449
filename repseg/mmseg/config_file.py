"""Reading a config file: parse it (a syntax error names the file and line, even in a
``_base_`` file) and apply ``--cfg-options`` overrides, refusing keys that have no place.

Reading comes before adapting (:mod:`repseg.mmseg.config`) and building
(:mod:`repseg.mmseg.builder`); what a key may hold is judged by
:mod:`repseg.mmseg.preflight`, which knows the components and imports none of these.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from mmengine.config import Config

from ..errors import UserError, first_few
from .config_values import value_problems
from .preflight import did_you_mean, override_problems

#: Top-level keys mmengine's Runner reads although most configs leave them out, so
#: ``--cfg-options randomness.seed=0`` or ``work_dir=...`` is not mistaken for a typo.
RUNNER_KEYS = frozenset({
    'auto_scale_lr', 'cfg', 'compile', 'custom_hooks', 'default_hooks', 'default_scope',
    'env_cfg', 'experiment_name', 'launcher', 'load_from', 'log_level', 'log_processor',
    'model', 'model_wrapper_cfg', 'optim_wrapper', 'param_scheduler', 'randomness',
    'resume', 'test_cfg', 'test_dataloader', 'test_evaluator', 'train_cfg',
    'train_dataloader', 'val_cfg', 'val_dataloader', 'val_evaluator', 'visualizer',
    'work_dir',
})
#: Top-level keys repseg's tools read (:mod:`repseg.mmseg.config`, ``preflight``).
REPSEG_KEYS = frozenset({'skip_data_check', 'nonfinite_loss_limit'})
#: Other top-level keys read after the file is loaded (``tools/test.py --tta``, mmseg's
#: and mmpretrain's tools, mmengine's custom imports and DDP setting).
READ_LATER_KEYS = frozenset({'tta_model', 'tta_pipeline', 'custom_imports',
                             'find_unused_parameters', 'data_preprocessor'})


class ConfigKeyError(UserError, KeyError):
    """A ``--cfg-options`` key that does not fit the config (likely a typo)."""

    def __str__(self):  # KeyError would quote the whole message
        return str(self.args[0])


class ConfigSyntaxError(UserError, ValueError):
    """A config file (or one of its ``_base_`` files) that is not valid Python."""


class ConfigValueError(UserError, ValueError):
    """A config, or a ``--cfg-options`` value, that no run can use."""


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _holders(node: Any, value: Any, path: str = '') -> Iterator[str]:
    """The dotted paths below ``node`` whose value equals ``value``."""
    if path and _plain(node) == value:
        yield path
        return
    items = (node.items() if isinstance(node, Mapping)
             else enumerate(node) if isinstance(node, (list, tuple)) else ())
    for key, child in items:
        yield from _holders(child, value, f'{path}.{key}' if path else str(key))


def _variable_problem(tree: Mapping, key: str, new: Any) -> Optional[str]:
    """Why overriding the top-level ``key`` cannot take effect, if it cannot: a variable
    of the config file (``data_root``, ``crop_size``, ``max_iters``) is copied into the
    sections when mmengine reads the file, so only those copies are read later."""
    if '.' in key or key not in tree or key in RUNNER_KEYS | REPSEG_KEYS | READ_LATER_KEYS:
        return None
    value = _plain(tree[key])
    written = new if isinstance(new, str) else repr(new).replace(' ', '')
    read = RUNNER_KEYS | REPSEG_KEYS | READ_LATER_KEYS
    holders = list(_holders({k: v for k, v in tree.items() if k in read}, value))
    if value is None or not holders:
        return None
    shown = first_few((f'{h}={written}' for h in holders), 6, sep=' ')
    return (f'--cfg-options {key}={written}: {key!r} is a variable of the config file, '
            'copied into the sections that use it when the file is read, so changing it '
            f'now would change nothing. Set the keys that hold its value '
            f'instead: {shown}')


def _path_problems(tree: Mapping, key: str) -> Iterator[str]:
    """Why the override ``key`` has no place in the config ``tree`` (nothing if it has).

    A key may add a new leaf to an existing dict (``model.backbone.with_cp``), but every
    part before the leaf must exist, list indices must be in range, and a new top-level
    key must be one mmengine's Runner (or repseg) reads. The message names the closest
    existing names.
    """
    parts = key.split('.')
    node: Any = tree
    for depth, part in enumerate(parts):
        here = '.'.join(parts[:depth + 1])
        is_leaf = depth == len(parts) - 1
        if isinstance(node, (list, tuple)):
            if not (part.isdigit() and int(part) < len(node)):
                yield (f"--cfg-options key {key!r}: {'.'.join(parts[:depth]) or 'the config'} "
                       f'is a list of {len(node)} items, so {part!r} is no valid index')
                return
            node = node[int(part)]
        elif isinstance(node, Mapping):
            if part in node:
                node = node[part]
            elif depth == 0 and part in RUNNER_KEYS | REPSEG_KEYS:
                node = {}  # a Runner key the config leaves out: anything below is new
            elif is_leaf and depth > 0:
                return  # a new leaf in an existing dict
            else:
                what = 'top-level key' if depth == 0 else 'key'
                yield (f'--cfg-options key {key!r}: the config has no {what} {here!r}'
                       + did_you_mean(part, node.keys(), '.'.join(parts[:depth])))
                return
        else:
            yield (f"--cfg-options key {key!r}: {'.'.join(parts[:depth])!r} is "
                   f'{type(node).__name__} {node!r}, not a dict, so it has no {part!r}')
            return


def read_config(path: Union[str, os.PathLike]) -> Config:
    """Parse a config file (and its ``_base_`` files); a syntax error names the file,
    the line and the code there (mmengine reports ``File "<unknown>"``); a file without
    a ``model`` (an empty one) is refused here, not as ``KeyError: 'model'`` later."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'config file not found: {path}')
    try:
        cfg = Config.fromfile(str(path))
    except SyntaxError as error:
        raise ConfigSyntaxError(_syntax_error_message(Path(path), error)) from None
    if 'model' not in cfg:
        found = (f"sets only {', '.join(sorted(cfg.keys()))}" if cfg.keys()
                 else 'sets nothing (it is empty)')
        raise ConfigValueError(
            f"config file {path} defines no 'model': it {found}. A repseg config describes "
            'the model, the data and the schedule: start from one in configs/, or inherit '
            "one with _base_ = ['../pspnet_repvgg_b2.py'] and change what differs.")
    return cfg


def _syntax_error_message(path: Path, error: SyntaxError) -> str:
    for file in _config_chain(path):
        try:
            ast.parse(file.read_text(), filename=str(file))
        except SyntaxError as found:
            error, path = found, file
            break
    code = (error.text or '').strip()
    where = f'line {error.lineno}' + (f': {code}' if code else '')
    return (f'config file {path} does not parse: {error.msg} at {where}. Fix the Python '
            'syntax there (a config is a Python file of assignments).')


def _config_chain(path: Path, seen: Optional[set] = None) -> list:
    """``path`` and the local ``_base_`` files it inherits from, recursively (as far as
    each parses); package bases such as ``mmseg::...`` are skipped."""
    seen = set() if seen is None else seen
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    chain = [path]
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:
        return chain
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '_base_'
                                                  for t in node.targets)):
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:
                continue
            for base in [bases] if isinstance(bases, str) else bases:
                if isinstance(base, str) and '::' not in base:
                    chain += _config_chain((path.parent / base).resolve(), seen)
    return chain


def apply_cfg_options(cfg: Config, cfg_options: Optional[Mapping] = None) -> Config:
    """Apply ``--cfg-options`` overrides to ``cfg`` (in place; returns it), refusing
    every key that does not fit, all in one :class:`ConfigKeyError`: a path the config
    lacks (:func:`_path_problems`), or an argument the component it lands in does not
    take (:func:`repseg.mmseg.preflight.override_problems`); then every value that
    cannot work, in one :class:`ConfigValueError`: a file variable that is read no more
    (:func:`_variable_problem`), or a value its component does not accept
    (:func:`repseg.mmseg.config_values.value_problems`)."""
    if not cfg_options:
        return cfg
    tree = cfg.to_dict()
    problems = {key: list(_path_problems(tree, key)) for key in cfg_options}
    cfg.merge_from_dict({k: v for k, v in cfg_options.items() if not problems[k]})
    fitting = [k for k in cfg_options if not problems[k]]
    found = [p for key_problems in problems.values() for p in key_problems]
    found += [f'--cfg-options key {p}' for p in override_problems(cfg, fitting)]
    if found:
        raise ConfigKeyError('\n\n'.join(found))
    values = [_variable_problem(tree, k, cfg_options[k]) for k in fitting]
    values = [p for p in values if p]
    values += [f'--cfg-options {p}' for p in value_problems(cfg, fitting)]
    if values:
        raise ConfigValueError('\n\n'.join(values))
    return cfg


def load_config(path: Union[str, os.PathLike], cfg_options: Optional[Mapping] = None) -> Config:
    """Read a config file, check the values of its model
    (:func:`repseg.mmseg.config_values.value_problems`) and apply ``--cfg-options``
    overrides (checked for typos and values).

    Args:
        path: the config file.
        cfg_options: ``{'model.backbone.arch': 'A0', ...}`` as parsed by mmengine's
            ``DictAction``; see :func:`apply_cfg_options` for what keys are accepted.
    """
    cfg = read_config(path)
    problems = value_problems(cfg, ['model'])  # what every tool builds; a run checks all
    if problems:
        raise ConfigValueError('\n\n'.join(f'{path}: {p}' for p in problems))
    return apply_cfg_options(cfg, cfg_options)
