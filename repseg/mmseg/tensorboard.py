"""TensorBoard logging for ``tools/train.py --tensorboard``.

mmengine's ``TensorboardVisBackend`` receives every scalar its logger hook records (the
losses, the learning rate, mIoU / mAcc / aAcc of each validation) and writes them to
``<work_dir>/<timestamp>/vis_data/events.out.tfevents.*``; ``tensorboard --logdir
work_dirs`` shows them. The same in a config, without the flag (one line)::

    visualizer = dict(vis_backends=[dict(type='LocalVisBackend'),
                                    dict(type='TensorboardVisBackend')])
"""
from __future__ import annotations

import importlib.util

from mmengine.config import Config

from ..errors import UserError

BACKEND = 'TensorboardVisBackend'


class TensorboardMissingError(UserError, ImportError):
    """``--tensorboard`` without the ``tensorboard`` package installed."""


def add_tensorboard(cfg: Config) -> None:
    """Add mmengine's TensorBoard backend to the config's visualizer (once)."""
    if importlib.util.find_spec('tensorboard') is None:
        raise TensorboardMissingError(
            "--tensorboard needs the 'tensorboard' package, which is not installed: "
            "pip install 'repseg[tensorboard]' (or pip install tensorboard).")
    visualizer = cfg.get('visualizer')
    if visualizer is None:
        visualizer = cfg.visualizer = dict(type='SegLocalVisualizer', name='visualizer')
    backends = list(visualizer.get('vis_backends') or [dict(type='LocalVisBackend')])
    if not any(str(b.get('type', '')).split('.')[-1] == BACKEND for b in backends):
        backends.append(dict(type=BACKEND))
    visualizer['vis_backends'] = backends
