"""Checkpoints never lose work: atomic writes, the pointer moved only after a complete
checkpoint, ``max_keep_ckpts`` across ``--resume``, the best checkpoint apart from the
rotation, and no checkpoint holding NaN/Inf (real mmengine Runners on a toy model)."""
import builtins
import math
from pathlib import Path

import pytest
import torch
from mmengine.runner import Runner

from repseg.mmseg.hooks import POINTER_FILE, AtomicCheckpointHook, AtomicLocalBackend
from repseg.mmseg.nonfinite import NonFiniteError
from toy_runner import ToyModel, toy_runner


class Crash(Exception):
    pass


def checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob('*.pth'))


def assert_finite_and_complete(path: Path, iteration: int) -> None:
    state = torch.load(path, map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == iteration
    assert all(torch.isfinite(t).all() for t in state['state_dict'].values())


def test_write_that_dies_midway_keeps_the_old_file(tmp_path, monkeypatch):
    """The backend the checkpoint hook writes through: a write cut off half-way (the
    disk fills, the process dies) leaves the previous file whole and no temporary."""
    target = tmp_path / 'iter_2.pth'
    target.write_bytes(b'complete old checkpoint')
    real_open = builtins.open

    class DiesMidway:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(bytes(data)[:len(data) // 2])
            self.file.flush()
            raise OSError(28, 'No space left on device')

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def dying_open(path, mode='r', *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return DiesMidway(file) if 'w' in mode and 'b' in mode else file

    with monkeypatch.context() as patch:
        patch.setattr(builtins, 'open', dying_open)
        with pytest.raises(OSError, match='No space left'):
            AtomicLocalBackend().put(b'new checkpoint bytes ' * 1000, target)
    assert target.read_bytes() == b'complete old checkpoint'
    assert [p.name for p in tmp_path.iterdir()] == ['iter_2.pth']


def crash_when_saving(monkeypatch, name: str) -> None:
    """Make ``Runner.save_checkpoint`` die when it writes the checkpoint ``name``."""
    save = Runner.save_checkpoint

    def save_or_crash(runner, out_dir, filename, *args, **kwargs):
        if filename == name:
            raise Crash(f'killed while writing {name}')
        return save(runner, out_dir, filename, *args, **kwargs)

    monkeypatch.setattr(Runner, 'save_checkpoint', save_or_crash)


def test_crash_inside_a_save_leaves_the_pointer_on_the_last_complete_checkpoint(
        tmp_path, monkeypatch):
    crash_when_saving(monkeypatch, 'iter_2.pth')
    runner = toy_runner(tmp_path, max_iters=3)
    with pytest.raises(Crash):
        runner.train()
    assert (tmp_path / POINTER_FILE).read_text() == str(tmp_path / 'iter_1.pth')
    assert checkpoints(tmp_path) == ['iter_1.pth']
    assert_finite_and_complete(tmp_path / 'iter_1.pth', 1)


def test_max_keep_ckpts_holds_across_resume(tmp_path):
    toy_runner(tmp_path, max_iters=3, checkpoint=dict(max_keep_ckpts=2)).train()
    assert checkpoints(tmp_path) == ['iter_2.pth', 'iter_3.pth']
    saved = torch.load(tmp_path / 'iter_3.pth', map_location='cpu', weights_only=True)
    assert saved['message_hub']['runtime_info']['keep_ckpt_ids'] == [2, 3]  # counts itself
    resumed = toy_runner(tmp_path, max_iters=6, checkpoint=dict(max_keep_ckpts=2), resume=True)
    resumed.train()
    assert resumed.iter == 6
    assert checkpoints(tmp_path) == ['iter_5.pth', 'iter_6.pth']  # iter_3, resumed from, went too
    assert (tmp_path / POINTER_FILE).read_text() == str(tmp_path / 'iter_6.pth')


def test_best_checkpoint_is_kept_apart_from_the_rotation(tmp_path):
    scores = [0.5, 0.9, 0.1, 0.2]
    runner = toy_runner(tmp_path, max_iters=4, scores=scores,
                        checkpoint=dict(max_keep_ckpts=1, save_best='score', rule='greater'))
    runner.train()
    assert checkpoints(tmp_path) == ['best_score_iter_2.pth', 'iter_4.pth']
    assert_finite_and_complete(tmp_path / 'best_score_iter_2.pth', 2)


def test_previous_best_survives_a_crash_while_saving_the_new_best(tmp_path, monkeypatch):
    crash_when_saving(monkeypatch, 'best_score_iter_2.pth')
    runner = toy_runner(tmp_path, max_iters=3, scores=[0.5, 0.9, 0.1],
                        checkpoint=dict(save_best='score', rule='greater'))
    with pytest.raises(Crash):
        runner.train()
    assert 'best_score_iter_1.pth' in checkpoints(tmp_path)
    assert_finite_and_complete(tmp_path / 'best_score_iter_1.pth', 1)


def test_weights_holding_nan_are_never_saved(tmp_path):
    """The loss guard is off here: the save itself refuses, and the run stops."""
    runner = toy_runner(tmp_path, max_iters=4, loss_limit=None, model=ToyModel(nan_weights=[3]))
    with pytest.raises(NonFiniteError) as error:
        runner.train()
    message = str(error.value)
    assert 'refusing to save checkpoint iter_3.pth' in message
    assert '1 of 1 tensors of the model hold NaN or Inf (weight)' in message
    assert str(tmp_path / 'iter_2.pth') in message and '--resume' in message
    assert checkpoints(tmp_path) == ['iter_1.pth', 'iter_2.pth']
    assert (tmp_path / POINTER_FILE).read_text() == str(tmp_path / 'iter_2.pth')
    assert_finite_and_complete(tmp_path / 'iter_2.pth', 2)
    assert math.isnan(runner.model.weight.item())


def test_hook_defaults_to_the_atomic_backend(tmp_path):
    runner = toy_runner(tmp_path, max_iters=1)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, AtomicCheckpointHook))
    assert isinstance(hook.file_backend, AtomicLocalBackend)
