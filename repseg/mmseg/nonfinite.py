"""Stop training at a NaN/Inf loss, before a checkpoint can hold it.

Without this, a run whose loss turns NaN (learning rate too high, float16 overflow,
labels outside the classes) trains on to the end, exits 0 and saves checkpoints full of
NaN; with ``max_keep_ckpts`` the good ones rotate out. :class:`NonFiniteLossHook` looks
at the loss of every iteration (the value, not the gradients: with AMP's dynamic loss
scaler, inf gradients are normal and the scaler skips those steps) and stops the run
with a message; :func:`nonfinite_tensors` is the second line of defence that
:class:`~repseg.mmseg.hooks.AtomicCheckpointHook` runs before every save.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ..errors import UserError, first_few

LIKELY_CAUSES = (
    'Likely causes: a learning rate too high for this batch size (lr {lr}); float16 '
    'overflow with --amp (try a lower lr, or train in float32); labels outside '
    '0..num_classes-1 and the ignore index (the pre-flight data check finds them unless '
    'it was skipped).')


class NonFiniteError(UserError, FloatingPointError):
    """Training produced a NaN/Inf loss or weights; the run stopped without saving them."""


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an Inf."""
    return [name for name, tensor in state.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())]


def _last_checkpoint(runner) -> str:
    """A sentence on the checkpoint to go on from (the hooks call this before a save
    moves ``last_ckpt``)."""
    path = runner.message_hub.get_info('last_ckpt')
    if not path:
        return 'No checkpoint was written.'
    return (f'The last checkpoint written, {path}, holds only finite tensors: fix the cause '
            'and continue from it with --resume (or from an earlier one if the loss was '
            'already climbing).')


def _learning_rate(runner) -> str:
    try:
        lrs = runner.optim_wrapper.get_lr()['lr']
    except (AttributeError, KeyError, TypeError):
        return 'unknown'
    return ', '.join(f'{lr:.3g}' for lr in dict.fromkeys(lrs))


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training when the loss is NaN or Inf for ``limit`` iterations in a row.

    Runs after each training iteration, before the checkpoint hook, so no checkpoint of
    that iteration is written and ``last_checkpoint`` keeps naming the last good one.
    In distributed runs every rank stops at the same iteration (the verdict is reduced
    over ranks). Raises :class:`NonFiniteError` naming the iteration, the loss terms and
    the likely causes.

    Args:
        limit: non-finite losses in a row that stop the run (1: the first one). The
            config key ``nonfinite_loss_limit`` sets it for repseg's tools.
    """

    priority = 'ABOVE_NORMAL'  # before the logger, the scheduler and the checkpoint hook

    def __init__(self, limit: int = 1):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f'limit must be a whole number >= 1, got {limit!r}')
        self.limit = limit
        self.in_a_row = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[Mapping] = None) -> None:
        losses = {key: value for key, value in (outputs or {}).items() if 'loss' in key}
        values = {key: float(value.detach() if torch.is_tensor(value) else value)
                  for key, value in losses.items()}
        bad = not all(math.isfinite(value) for value in values.values())
        if is_distributed():
            device = next((v.device for v in losses.values() if torch.is_tensor(v)), 'cpu')
            flag = torch.tensor([float(bad)], device=device)
            all_reduce(flag, op='max')
            bad = bool(flag.item())
        if not bad:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        iteration = runner.iter + 1
        terms = ', '.join(f'{key}={value:.4g}' for key, value in values.items())
        if self.in_a_row < self.limit:
            runner.logger.warning(f'non-finite loss at iteration {iteration} ({terms}); '
                                  f'{self.in_a_row} of {self.limit} in a row stop training')
            return
        repeat = f' for {self.in_a_row} iterations in a row' if self.in_a_row > 1 else ''
        raise NonFiniteError(
            f'training stopped at iteration {iteration}: the loss is not finite{repeat} '
            f'({terms or "no loss terms on this rank; another rank saw NaN/Inf"}). '
            + LIKELY_CAUSES.format(lr=_learning_rate(runner))
            + f' Nothing of this iteration was saved. {_last_checkpoint(runner)}')


def refuse_nonfinite_weights(runner, what: str) -> None:
    """Raise :class:`NonFiniteError` if the model being saved as ``what`` holds a NaN or
    Inf, so that no such checkpoint is ever written."""
    state = runner.model.state_dict()
    bad = nonfinite_tensors(state)
    if not bad:
        return
    shown = first_few(bad, 3)
    raise NonFiniteError(
        f'training stopped at iteration {runner.iter + 1}: refusing to save {what}, since '
        f'{len(bad)} of {len(state)} tensors of the model hold NaN or Inf ({shown}). '
        + LIKELY_CAUSES.format(lr=_learning_rate(runner))
        + f' {_last_checkpoint(runner)}')
