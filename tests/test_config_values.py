"""Config values: what a component would refuse with a traceback, or a setting that
would silently do nothing, is refused first with the key, the value and the fix; a
combination torch refuses (no workers to keep) is fixed up with a log line."""
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from repseg.mmseg import config as config_module
from repseg.mmseg.builder import build_segmentor, load_config
from repseg.mmseg.config import prepare_config
from test_error_matrix import run_tool as run_in_process

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'


def run_tool_now(tool, argv, capsys):
    """:func:`test_error_matrix.run_tool` with mmengine's current logger writing to this
    test's capture (a logger made during an earlier test holds that test's closed one)
    and stderr without what fixtures printed first."""
    from mmengine.logging import MMLogger

    for handler in MMLogger.get_current_instance().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, 'closed', 0):
            handler.stream = sys.stdout  # setStream would flush the closed one
    capsys.readouterr()
    return run_in_process(tool, argv, capsys)


def assert_one_error(status, err, *phrases):
    """Exit status 2 and one ``error:`` paragraph (after nothing but the data check's
    progress bars) holding every phrase."""
    assert status == 2, err[-3000:]
    start = err.find('error: ')
    assert start == 0 or err[start - 1] == '\n', err[-3000:]
    assert err.count('error: ') == 1 and 'Traceback' not in err, err[-3000:]
    flat = ' '.join(err.split())
    for phrase in phrases:
        assert phrase in flat, err[-3000:]


@pytest.mark.parametrize('option, phrase', [
    ('train_cfg.max_iters=abc', "train_cfg.max_iters is the text 'abc': expected a whole "
                                'number >= 1 (training iterations), e.g. train_cfg.max_iters='),
    ('train_cfg.max_iters=0', 'train_cfg.max_iters is 0 (int): expected a whole number >= 1'),
    ('train_cfg.val_interval=-5', 'train_cfg.val_interval is -5 (int): expected a whole number'),
    ('train_dataloader.batch_size=0', 'train_dataloader.batch_size is 0 (int): expected a '
                                      'whole number >= 1'),
    ('train_dataloader.batch_size=True', 'train_dataloader.batch_size is True: expected a '
                                         'whole number >= 1'),  # bool is an int in Python
    ('val_dataloader.num_workers=-1', 'val_dataloader.num_workers is -1 (int): expected a '
                                      'whole number >= 0'),
    ('train_dataloader.persistent_workers=yes', "persistent_workers is the text 'yes': "
                                                'expected True or False'),
    ('optim_wrapper.optimizer.lr=-1', 'optim_wrapper.optimizer.lr is -1 (int): expected a '
                                      'number >= 0 (the learning rate)'),
    ('train_dataloader.dataset.pipeline.3.crop_size=(0,128)', 'pipeline.3.crop_size is (0, '
                                                              '128) (tuple): expected a whole'),
    ('model.decode_head.num_classes=0', 'model.decode_head.num_classes is 0 (int)'),
    ('model.test_cfg.mode=slide', "model.test_cfg: mode 'slide' needs crop_size and stride"),
    ('nonfinite_loss_limit=-1', '--cfg-options nonfinite_loss_limit is -1 (int): expected a '
                                'whole number >= 1 (how many non-finite losses in a row stop '
                                'training; 1 stops at the first), e.g. nonfinite_loss_limit='),
    ('nonfinite_loss_limit=abc', "nonfinite_loss_limit is the text 'abc': expected a whole "
                                 'number >= 1'),
    ('nonfinite_loss_limit=0.5', 'nonfinite_loss_limit is 0.5 (float): expected a whole '
                                 'number >= 1'),
    ('data_root=/elsewhere', "--cfg-options data_root=/elsewhere: 'data_root' is a variable of "
                             'the config file, copied into the sections that use it when the '
                             'file is read, so changing it now would change nothing. Set the '
                             'keys that hold its value instead: train_dataloader.dataset.'
                             'data_root=/elsewhere val_dataloader.dataset.data_root=/elsewhere '
                             'test_dataloader.dataset.data_root=/elsewhere'),
], ids=lambda value: value.split('=')[0] if '=' in value and ' ' not in value else '')
def test_train_refuses_a_value_the_component_cannot_take(option, phrase, tmp_path, capsys):
    work_dir = tmp_path / 'work'
    status, err = run_tool_now('train', [str(DEMO_CONFIG), '--work-dir', str(work_dir),
                                     '--cfg-options', option], capsys)
    assert_one_error(status, err, phrase)
    assert not work_dir.exists()


def test_every_bad_value_is_named_at_once_and_good_values_pass():
    with pytest.raises(ValueError) as error:
        load_config(DEMO_CONFIG, {'train_cfg.max_iters': 0, 'optim_wrapper.optimizer.lr': -1,
                                  'train_dataloader.batch_size': 2})
    message = str(error.value)
    assert message.count('--cfg-options ') == 2 and 'batch_size' not in message
    cfg = load_config(DEMO_CONFIG, {
        'train_cfg.max_iters': 1, 'optim_wrapper.optimizer.lr': 0.0,
        'train_dataloader.num_workers': 0, 'default_hooks.checkpoint.interval': -1,
        'train_dataloader.dataset.pipeline.3.crop_size': (64, 64),
        'model.test_cfg': dict(mode='slide', crop_size=(64, 64), stride=(32, 32))})
    assert cfg.train_cfg.max_iters == 1 and cfg.model.test_cfg.stride == (32, 32)


def test_empty_config_file_is_named(tmp_path, capsys):
    empty = tmp_path / 'empty.py'
    empty.write_text('')
    status, err = run_tool_now('train', [str(empty), '--work-dir', str(tmp_path / 'work')], capsys)
    assert_one_error(status, err, f"config file {empty} defines no 'model': it sets nothing "
                                  '(it is empty)')
    assert not (tmp_path / 'work').exists()


def test_sliding_window_config_without_its_window_is_refused_by_every_tool(tmp_path, capsys):
    config = tmp_path / 'slide.py'
    config.write_text(f"_base_ = ['{DEMO_CONFIG}']\n"
                      "model = dict(test_cfg=dict(mode='slide', crop_size=(64, 64)))\n")
    image = tmp_path / 'frame.png'
    cv2.imwrite(str(image), np.zeros((64, 128, 3), np.uint8))
    checkpoint = tmp_path / 'seg.pth'
    torch.save({'state_dict': build_segmentor(load_config(DEMO_CONFIG)).state_dict()},
               checkpoint)
    status, err = run_tool_now('infer', [str(config), str(checkpoint), str(image), '--out-dir',
                                     str(tmp_path / 'out')], capsys)
    assert_one_error(status, err, f"{config}: model.test_cfg: mode 'slide' needs stride")
    assert not (tmp_path / 'out').exists()


def test_bad_value_in_the_config_file_is_named_before_training(tmp_path, capsys):
    config = tmp_path / 'zero_batch.py'
    config.write_text(f"_base_ = ['{DEMO_CONFIG}']\ntrain_dataloader = dict(batch_size=0)\n")
    status, err = run_tool_now('train', [str(config), '--work-dir', str(tmp_path / 'work')], capsys)
    assert_one_error(status, err, f'{config}: train_dataloader.batch_size is 0 (int): '
                                  'expected a whole number >= 1')
    assert not (tmp_path / 'work').exists()


@pytest.mark.parametrize('limit', [0, True, '2'])
def test_bad_loss_limit_in_the_config_file_is_named(tmp_path, limit):
    """Not an override: checked as the loss guard is added (the pre-flight checks read
    the sections a run builds, not this top-level key)."""
    config = tmp_path / 'loss_limit.py'
    config.write_text(f"_base_ = ['{DEMO_CONFIG}']\nnonfinite_loss_limit = {limit!r}\n")
    described = {0: '0 (int)', True: 'True', '2': "the text '2'"}[limit]
    with pytest.raises(config_module.ConfigError) as refused:
        prepare_config(config, None, str(tmp_path / 'work'))
    assert str(refused.value) == (
        f'{config}: nonfinite_loss_limit is {described}: expected a whole number >= 1 (how '
        'many non-finite losses in a row stop training; 1 stops at the first), e.g. '
        'nonfinite_loss_limit=3')
    assert not (tmp_path / 'work').exists()


def test_good_loss_limits_reach_the_guard(tmp_path):
    config = tmp_path / 'loss_limit.py'
    config.write_text(f"_base_ = ['{DEMO_CONFIG}']\nnonfinite_loss_limit = 5\n")
    for path, options, limit in ((DEMO_CONFIG, {'nonfinite_loss_limit': 1}, 1),
                                 (DEMO_CONFIG, {'nonfinite_loss_limit': 7}, 7),
                                 (config, None, 5), (DEMO_CONFIG, None, 1)):
        cfg = prepare_config(path, options, str(tmp_path / 'work'))
        assert [h['limit'] for h in cfg.custom_hooks if h['type'] == 'NonFiniteLossHook'] \
            == [limit]


def test_no_workers_with_persistent_workers_is_fixed_up(monkeypatch):
    logged = []
    monkeypatch.setattr(config_module, 'print_log', lambda msg, **kw: logged.append(msg))
    cfg = prepare_config(DEMO_CONFIG, {'train_dataloader.num_workers': 0})
    loader = cfg.train_dataloader
    assert loader.num_workers == 0 and loader.persistent_workers is False
    DataLoader(range(4), num_workers=loader.num_workers,
               persistent_workers=loader.persistent_workers)  # torch accepts it
    assert cfg.val_dataloader.persistent_workers is True  # its workers stay
    assert any(m.startswith('train_dataloader: num_workers=0') for m in logged)
