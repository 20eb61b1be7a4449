"""A NaN/Inf loss stops training with a message, before any checkpoint can hold it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repseg.data.toy_city import make_toy_cityscapes
from repseg.mmseg.config import prepare_config
from repseg.mmseg.hooks import POINTER_FILE
from repseg.mmseg.nonfinite import NonFiniteError, NonFiniteLossHook
from toy_runner import ToyModel, toy_runner

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'


def test_first_nan_loss_stops_before_its_checkpoint(tmp_path):
    runner = toy_runner(tmp_path, max_iters=5, model=ToyModel(nan_loss=[3]))
    with pytest.raises(NonFiniteError) as error:
        runner.train()
    message = str(error.value)
    assert message.startswith('training stopped at iteration 3: the loss is not finite')
    assert 'loss=nan' in message and 'loss_mse=nan' in message
    for cause in ('learning rate', 'float16 overflow', 'labels outside'):
        assert cause in message
    assert f"{tmp_path / 'iter_2.pth'}, holds only finite tensors" in message
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_1.pth', 'iter_2.pth']
    assert (tmp_path / POINTER_FILE).read_text() == str(tmp_path / 'iter_2.pth')


def test_limit_counts_non_finite_losses_in_a_row(tmp_path):
    """With limit 2, a single NaN (as AMP's skipped steps can give) is tolerated and the
    count starts over; two in a row stop the run."""
    runner = toy_runner(tmp_path, max_iters=8, loss_limit=2,
                        model=ToyModel(nan_loss=[2, 4, 5]))
    with pytest.raises(NonFiniteError, match='iteration 5: the loss is not finite for 2 '
                                             'iterations in a row'):
        runner.train()
    assert (tmp_path / POINTER_FILE).read_text() == str(tmp_path / 'iter_4.pth')
    with pytest.raises(ValueError, match='limit must be a whole number >= 1'):
        NonFiniteLossHook(0)


def test_guard_is_added_by_config_preparation():
    cfg = prepare_config(DEMO_CONFIG, {'nonfinite_loss_limit': 3})
    guards = [h for h in cfg.custom_hooks if h['type'] == 'NonFiniteLossHook']
    assert guards == [dict(type='NonFiniteLossHook', limit=3)]
    assert prepare_config(DEMO_CONFIG).custom_hooks[-1] == dict(type='NonFiniteLossHook', limit=1)
    with pytest.raises(ValueError, match="nonfinite_loss_limit is the text 'x'"):
        prepare_config(DEMO_CONFIG, {'nonfinite_loss_limit': 'x'})


def test_cli_train_with_huge_lr_stops_with_only_finite_checkpoints(tmp_path):
    """The demo model with lr 1e9 (NaN at iteration 3; 1e6 takes one more): the tool exits
    2 with the message, every checkpoint on disk holds finite tensors and last_checkpoint
    names an existing one."""
    root = tmp_path / 'toy'
    make_toy_cityscapes(root, num_train=4, num_val=2, size=(64, 128), seed=4)
    options = {f'{loader}.dataset.data_root': str(root)
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    options.update({'train_dataloader.num_workers': 0, 'train_dataloader.persistent_workers': False,
                    'train_dataloader.batch_size': 2, 'train_cfg.max_iters': 5,
                    'train_cfg.val_interval': 100, 'default_hooks.checkpoint.interval': 1,
                    'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 8,
                    'optim_wrapper.optimizer.lr': 1e9})
    work_dir = tmp_path / 'work'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools/train.py'), str(DEMO_CONFIG), '--work-dir',
         str(work_dir), '--cfg-options', *[f'{k}={v}' for k, v in options.items()]],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert 'error: training stopped at iteration' in result.stderr
    assert 'the loss is not finite' in result.stderr and 'decode.loss_ce=' in result.stderr
    saved = sorted(work_dir.glob('*.pth'))
    for path in saved:
        state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
    if saved:
        assert Path((work_dir / POINTER_FILE).read_text()) in saved
    else:  # NaN at the first iteration: nothing saved, no pointer
        assert not (work_dir / POINTER_FILE).exists()


class _Hub:
    def get_info(self, key):
        return None


def stub_runner(state=None):
    """What the guard reads of a Runner: the iteration, the message hub, the model."""
    from types import SimpleNamespace

    model = SimpleNamespace(state_dict=lambda: state or {})
    return SimpleNamespace(iter=6, message_hub=_Hub(), model=model, optim_wrapper=None,
                           logger=None)


@pytest.mark.parametrize('value', [float('inf'), float('-inf')])
def test_infinite_loss_stops_like_nan(value):
    """Every other guard test uses NaN; an overflowing loss is +-Inf, not NaN."""
    outputs = {'loss_ce': torch.tensor(0.5), 'loss_aux': torch.tensor(value)}
    with pytest.raises(NonFiniteError, match=f'iteration 7: the loss is not finite '
                                             rf'\(loss_ce=0.5, loss_aux={value}\)'):
        NonFiniteLossHook(1).after_train_iter(stub_runner(), 0, outputs=outputs)
    NonFiniteLossHook(1).after_train_iter(stub_runner(), 0,
                                          outputs={'loss': torch.tensor(1e30)})


def test_infinite_weight_is_never_saved():
    from repseg.mmseg.nonfinite import refuse_nonfinite_weights

    state = {'a': torch.ones(3), 'b': torch.tensor([1.0, float('inf')]),
             'steps': torch.tensor([2 ** 40])}
    with pytest.raises(NonFiniteError, match=r'1 of 3 tensors of the model hold NaN or Inf '
                                             r'\(b\)'):
        refuse_nonfinite_weights(stub_runner(state), 'checkpoint iter_7.pth')
    refuse_nonfinite_weights(stub_runner({'a': torch.ones(3)}), 'checkpoint iter_7.pth')
