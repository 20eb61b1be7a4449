"""Multi-process CPU training through tools/dist_train.sh (torchrun, gloo, BN), resuming
an interrupted run, and atomic checkpoint writing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook

from repseg.data.toy_city import make_toy_cityscapes
from repseg.fileio import write_bytes_atomically
from repseg.gpu_check.steps import free_port
from repseg.mmseg import hooks as repseg_hooks
from repseg.mmseg.runner import build_runner, prepare_config, run_train

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'


def tiny_options(data_root, max_iters):
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    options = {f'{loader}.dataset.data_root': str(data_root) for loader in loaders}
    options.update({f'{loader}.num_workers': 0 for loader in loaders})
    options.update({f'{loader}.persistent_workers': False for loader in loaders})
    options.update({
        'train_dataloader.batch_size': 2, 'train_cfg.max_iters': max_iters,
        'train_cfg.val_interval': 100, 'default_hooks.checkpoint.interval': 2,
        'default_hooks.logger.interval': 1, 'model.decode_head.channels': 16,
        'model.auxiliary_head.channels': 8, 'model.decode_head.dropout_ratio': 0.0,
        'model.auxiliary_head.dropout_ratio': 0.0,
        # a schedule that changes every iteration, so a lost scheduler state shows
        'param_scheduler': [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0,
                                 end=max_iters, by_epoch=False)]})
    return options


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_city')
    make_toy_cityscapes(root, num_train=8, num_val=4, size=(64, 128), seed=5)
    return root


def test_dist_train_two_cpu_processes(toy_root, tmp_path):
    options = tiny_options(toy_root, 4)
    del options['param_scheduler']  # keep the config's
    options['default_hooks.checkpoint.interval'] = 4
    cli = [f'{k}={v}' for k, v in options.items()]
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1')
    result = subprocess.run(
        ['bash', str(ROOT / 'tools/dist_train.sh'), str(DEMO_CONFIG), '2', '--work-dir',
         str(tmp_path), '--cfg-options', *cli],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_4.pth']
    assert (tmp_path / 'last_checkpoint').read_text().endswith('iter_4.pth')
    rank1_logs = list(tmp_path.glob('*/rank1.log'))
    assert len(rank1_logs) == 1
    rank1 = rank1_logs[0].read_text()
    assert 'rank 1 of 2' in rank1 and 'Iter(train) [4/4]' in rank1
    rank0 = next(p for p in rank1_logs[0].parent.glob('*.log') if p.name != 'rank1.log')
    text = rank0.read_text()
    assert 'Iter(train) [4/4]' in text
    assert 'DeviceAwareDDP' in text or 'model_wrapper_cfg' in text
    state = torch.load(tmp_path / 'iter_4.pth', map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 4
    assert not any('SyncBN' in line for line in state['meta']['cfg'].splitlines()
                   if 'norm_cfg' in line and 'type' in line)


class Crash(Exception):
    pass


class CrashAfter(Hook):
    """Simulates a crash right after iteration ``iters`` (its checkpoint already saved)."""

    def __init__(self, iters):
        self.iters = iters

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.iters:
            raise Crash(f'crash after iteration {self.iters}')


class RecordResumedState(Hook):
    """Records optimizer and scheduler state before the first iteration of a run."""

    def __init__(self):
        self.state = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.state is None:
            optimizer = runner.optim_wrapper.optimizer
            self.state = dict(
                iter=runner.iter,
                momentum={id_: s['momentum_buffer'].clone()
                          for id_, s in optimizer.state_dict()['state'].items()},
                steps=[s._global_step for s in runner.param_schedulers],
                lr=optimizer.param_groups[0]['lr'])


def test_resume_carries_optimizer_and_scheduler_state(toy_root, tmp_path):
    options = tiny_options(toy_root, 4)
    straight = tmp_path / 'straight'
    reference = run_train(DEMO_CONFIG, work_dir=str(straight), cfg_options={
        **options, 'default_hooks.checkpoint.interval': 1,
        'default_hooks.checkpoint.max_keep_ckpts': 2})
    # the atomic checkpoint hook keeps the newest two, and the pointer names the last
    assert sorted(p.name for p in straight.glob('*.pth')) == ['iter_3.pth', 'iter_4.pth']
    assert (straight / 'last_checkpoint').read_text() == str(straight / 'iter_4.pth')
    assert not [p for p in straight.iterdir() if p.name.endswith('.tmp')]
    hook = next(h for h in reference.hooks if isinstance(h, repseg_hooks.AtomicCheckpointHook))
    assert isinstance(hook.file_backend, repseg_hooks.AtomicLocalBackend)

    work_dir = tmp_path / 'interrupted'
    cfg = prepare_config(DEMO_CONFIG, options, str(work_dir))
    runner = build_runner(cfg)
    runner.register_hook(CrashAfter(2), priority='LOWEST')
    with pytest.raises(Crash):
        runner.train()
    assert (work_dir / 'last_checkpoint').read_text().endswith('iter_2.pth')
    assert not (work_dir / 'iter_4.pth').exists()

    cfg = prepare_config(DEMO_CONFIG, options, str(work_dir))
    cfg.resume = True
    resumed = build_runner(cfg)
    record = RecordResumedState()
    resumed.register_hook(record)
    resumed.train()

    saved = torch.load(work_dir / 'iter_2.pth', map_location='cpu', weights_only=True)
    assert record.state['iter'] == 2
    assert record.state['steps'] == [2]
    saved_momentum = saved['optimizer']['state']
    assert saved_momentum and record.state['momentum'].keys() == saved_momentum.keys()
    for key, buffer in record.state['momentum'].items():
        assert torch.equal(buffer, saved_momentum[key]['momentum_buffer'])
    assert any(buffer.abs().sum() > 0 for buffer in record.state['momentum'].values())

    assert resumed.iter == 4 and (work_dir / 'iter_4.pth').is_file()
    assert [s._global_step for s in resumed.param_schedulers] == [4]
    assert [s.last_step for s in resumed.param_schedulers] == \
        [s.last_step for s in reference.param_schedulers]
    final_lr = resumed.optim_wrapper.optimizer.param_groups[0]['lr']
    assert final_lr == pytest.approx(reference.optim_wrapper.optimizer.param_groups[0]['lr'])
    ours, theirs = resumed.model.state_dict(), reference.model.state_dict()
    for key in ours:
        assert torch.allclose(ours[key].float(), theirs[key].float(), rtol=1e-3, atol=1e-5), key


def test_write_atomically_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / 'iter_2.pth'
    write_bytes_atomically(target, b'complete checkpoint')

    def crash(src, dst):
        raise KeyboardInterrupt('killed mid-write')

    monkeypatch.setattr(os, 'replace', crash)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomically(target, b'half')
    assert target.read_bytes() == b'complete checkpoint'
    assert [p.name for p in tmp_path.iterdir()] == ['iter_2.pth']
