"""A real mmengine Runner around a one-weight model, built in well under a second, for the
tests of the checkpoint hook and the non-finite loss guard (no mmseg model, no data)."""
import itertools
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner

from repseg.mmseg.hooks import AtomicCheckpointHook
from repseg.mmseg.nonfinite import NonFiniteLossHook

_names = itertools.count()


class ToyModel(BaseModel):
    """Fits ``y = 2x`` with one weight. Per training call (1-based), ``nan_loss`` adds a
    NaN to the loss value only (the gradient stays finite, as when AMP skips a step) and
    ``nan_weights`` turns the weight NaN after the forward (the loss stays finite)."""

    def __init__(self, nan_loss: Sequence[int] = (), nan_weights: Sequence[int] = ()):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.nan_loss, self.nan_weights = set(nan_loss), set(nan_weights)
        self.calls = 0

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = inputs
        prediction = self.weight * x
        if mode != 'loss':
            return [dict(prediction=p) for p in prediction]
        self.calls += 1
        loss = ((prediction - 2 * x) ** 2).mean()
        if self.calls in self.nan_loss:
            loss = loss + torch.tensor(math.nan)
        if self.calls in self.nan_weights:
            with torch.no_grad():
                self.weight.fill_(math.nan)
        return dict(loss_mse=loss)


class ScoreMetric(BaseMetric):
    """Reports the next of ``scores`` at each validation (for ``save_best``)."""

    def __init__(self, scores: Sequence[float]):
        super().__init__()
        self.scores = iter(scores)

    def process(self, data_batch, data_samples) -> None:
        self.results.append(0)

    def compute_metrics(self, results) -> dict:
        return dict(score=next(self.scores))


def toy_runner(work_dir, max_iters: int, checkpoint: Optional[dict] = None,
               loss_limit: Optional[int] = 1, model: Optional[nn.Module] = None,
               resume: bool = False, scores: Optional[Sequence[float]] = None) -> Runner:
    """A Runner of ``max_iters`` iterations (batch 2 of 8 samples) in ``work_dir`` with
    :class:`AtomicCheckpointHook` (``checkpoint``: its arguments) and, unless
    ``loss_limit`` is None, :class:`NonFiniteLossHook`. ``scores``: validate every
    iteration with :class:`ScoreMetric`."""
    data = [dict(inputs=torch.full((1,), float(i + 1))) for i in range(8)]
    loader = dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                  batch_size=2, collate_fn=dict(type='default_collate'), num_workers=0)
    checkpoint = dict(dict(interval=1, by_epoch=False), **(checkpoint or {}))
    validation = {}
    if scores is not None:
        validation = dict(val_dataloader=loader, val_cfg=dict(),
                          val_evaluator=[ScoreMetric(scores)])
    return Runner(
        model=model or ToyModel(), work_dir=str(work_dir), experiment_name=f'toy_{next(_names)}',
        train_dataloader=loader, optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.001)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=1),
        default_hooks=dict(checkpoint=AtomicCheckpointHook(**checkpoint),
                           logger=dict(type='LoggerHook', interval=100)),
        custom_hooks=[] if loss_limit is None else [NonFiniteLossHook(loss_limit)],
        resume=resume, default_scope='mmengine', log_level='WARNING', **validation)
