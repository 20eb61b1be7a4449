"""What a config value may be: a table of rules for the keys whose wrong values would
otherwise end in a traceback deep in mmengine or torch, or in a run that does nothing.

Key checks (:mod:`repseg.mmseg.preflight`) make sure an argument exists; these rules
make sure its value is one the component accepts: ``train_cfg.max_iters=abc`` or
``=0``, ``train_dataloader.batch_size=0`` and ``optim_wrapper.optimizer.lr=-1`` are
refused with the key, the value and what is expected. :func:`value_problems` is called
for ``--cfg-options`` as they are applied (:mod:`repseg.mmseg.config_file`) and for the
whole config before a run (:func:`repseg.mmseg.preflight.preflight`).
"""
from __future__ import annotations

import fnmatch
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(value: Any) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    return 1 <= len(items) <= 2 and all(_whole(v) and v >= 1 for v in items)


@dataclass(frozen=True)
class Expect:
    """A kind of value: what it is called in a message, and the test of it."""

    text: str
    test: Callable[[Any], bool]


WHOLE_POSITIVE = Expect('a whole number >= 1', lambda v: _whole(v) and v >= 1)
WHOLE_NON_NEGATIVE = Expect('a whole number >= 0', lambda v: _whole(v) and v >= 0)
NON_NEGATIVE = Expect('a number >= 0', lambda v: isinstance(v, numbers.Real)
                      and not isinstance(v, bool) and v >= 0)
FLAG = Expect('True or False', lambda v: isinstance(v, bool))
SIZE = Expect('a whole number >= 1 or a pair of them', _size)
INTERVAL = Expect('a whole number >= 1 (or -1: never)', lambda v: _whole(v) and (v >= 1 or v == -1))


@dataclass(frozen=True)
class Rule:
    """Values of the keys matching ``pattern`` (``fnmatch`` on the dotted path, ``*``
    spanning dots) must be ``expect``; ``meaning`` and ``example`` go into the message."""

    pattern: str
    expect: Expect
    meaning: str
    example: str


RULES = (
    Rule('train_cfg.max_iters', WHOLE_POSITIVE, 'training iterations', '1000'),
    Rule('train_cfg.max_epochs', WHOLE_POSITIVE, 'training epochs', '40'),
    Rule('train_cfg.val_interval', WHOLE_POSITIVE, 'iterations between validations', '1000'),
    Rule('train_cfg.val_begin', WHOLE_NON_NEGATIVE, 'first iteration to validate after', '1'),
    Rule('*_dataloader.batch_size', WHOLE_POSITIVE, 'images per batch and process', '2'),
    Rule('*_dataloader.num_workers', WHOLE_NON_NEGATIVE,
         'data-loading processes; 0 loads in the main process', '2'),
    Rule('*_dataloader.persistent_workers', FLAG, 'keep the loading processes', 'False'),
    Rule('*_dataloader.pin_memory', FLAG, 'pinned host memory', 'True'),
    Rule('optim_wrapper.optimizer.lr', NON_NEGATIVE, 'the learning rate', '0.01'),
    Rule('optim_wrapper.optimizer.momentum', NON_NEGATIVE, 'the momentum', '0.9'),
    Rule('optim_wrapper.optimizer.weight_decay', NON_NEGATIVE, 'the weight decay', '0.0005'),
    Rule('default_hooks.checkpoint.interval', INTERVAL, 'iterations between checkpoints',
         '1000'),
    Rule('default_hooks.logger.interval', WHOLE_POSITIVE, 'iterations between log lines', '50'),
    Rule('model.*.num_classes', WHOLE_POSITIVE, 'the classes to predict', '19'),
    Rule('*crop_size', SIZE, 'the crop (height, width) in pixels', '(512,1024)'),
    Rule('model.test_cfg.stride', SIZE, 'the sliding-window step (height, width)', '(341,341)'),
    Rule('model.data_preprocessor.size', SIZE, 'the padded input (height, width)',
         '(512,1024)'),
    Rule('nonfinite_loss_limit', WHOLE_POSITIVE, 'how many non-finite losses in a row stop '
         'training; 1 stops at the first', '3'),
)

#: Keys mmseg's sliding-window inference reads from ``model.test_cfg`` when ``mode`` is 'slide'.
SLIDE_KEYS = ('crop_size', 'stride')


def _nodes(node: Any, path: str = '') -> Iterator[tuple[str, Any]]:
    if path:
        yield path, node
    if isinstance(node, Mapping):
        children: Iterable = node.items()
    elif isinstance(node, (list, tuple)):
        children = enumerate(node)
    else:
        return
    for key, value in children:
        yield from _nodes(value, f'{path}.{key}' if path else str(key))


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'the text {value!r}'
    return repr(value) if value is None or isinstance(value, bool) else \
        f'{value!r} ({type(value).__name__})'


def _slide_problem(test_cfg: Any) -> Optional[str]:
    if not isinstance(test_cfg, Mapping) or test_cfg.get('mode') != 'slide':
        return None
    missing = [k for k in SLIDE_KEYS if test_cfg.get(k) is None]
    if not missing:
        return None
    return (f"model.test_cfg: mode 'slide' needs {' and '.join(missing)} (the window and "
            f"its step, (height, width) in pixels), which it lacks; set e.g. "
            "model.test_cfg.crop_size=(512,1024) model.test_cfg.stride=(341,341), or use "
            "model.test_cfg.mode=whole")


def _related(key: str, touched: Optional[Iterable[str]]) -> bool:
    if touched is None:
        return True
    return any(key == t or key.startswith(t + '.') or t.startswith(key + '.') for t in touched)


def value_problems(cfg: Mapping, touched: Optional[Iterable[str]] = None) -> list[str]:
    """Every value of ``cfg`` that breaks a rule of :data:`RULES` (and a sliding-window
    ``model.test_cfg`` without its window), one message each, starting with the key;
    with ``touched`` (overridden keys) only problems of those keys, what they hold and
    the sections holding them."""
    touched = None if touched is None else list(touched)
    tree = cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg
    problems = []
    for path, value in _nodes(tree):
        rule = next((r for r in RULES if fnmatch.fnmatchcase(path, r.pattern)), None)
        if rule and not rule.expect.test(value) and _related(path, touched):
            problems.append(f'{path} is {_describe(value)}: expected {rule.expect.text} '
                            f'({rule.meaning}), e.g. {path}={rule.example}')
    slide = _slide_problem((tree.get('model') or {}).get('test_cfg'))
    if slide and _related('model.test_cfg', touched):
        problems.append(slide)
    return problems
