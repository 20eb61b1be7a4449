"""Configs: every ``--cfg-options`` key is checked against the component it lands in, a
config that does not parse is named with its line, and the schedule follows an
overridden ``train_cfg.max_iters``."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import PARAM_SCHEDULERS

from repseg.errors import UserError
from repseg.mmseg import config as config_module
from repseg.mmseg.builder import ConfigKeyError, ConfigSyntaxError, load_config
from repseg.mmseg.config import prepare_config

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'
B2_CONFIG = ROOT / 'configs/pspnet_repvgg_b2.py'


@pytest.mark.parametrize('key, value, phrase', [
    ('train_dataloader.batch_sise', 4, "DataLoader has no argument 'batch_sise'; did you mean "
                                       "'batch_size'"),
    ('val_dataloader.num_worker', 2, "did you mean 'num_workers'"),
    ('train_dataloader.sampler.shufle', False, "InfiniteSampler has no argument 'shufle'; "
                                               "did you mean 'shuffle'"),
    ('train_dataloader.dataset.img_sufix', '.png', "CityscapesDataset has no argument "
                                                   "'img_sufix'; did you mean 'img_suffix'"),
    ('train_dataloader.dataset.pipeline.1.reduce_zero_lable', True, "did you mean "
                                                                    "'reduce_zero_label'"),
    ('test_dataloader.dataset.pipeline.0.color_typ', 'color', "did you mean 'color_type'"),
    ('optim_wrapper.optimizer.momentun', 0.9, "SGD has no argument 'momentun'; did you mean "
                                              "'momentum'"),
    ('optim_wrapper.clip_grads', None, "OptimWrapper has no argument 'clip_grads'"),
    ('param_scheduler.1.powr', 1.0, "PolyLR has no argument 'powr'; did you mean 'power'"),
    ('default_hooks.checkpoint.max_keep_ckpt', 1, "did you mean 'max_keep_ckpts'"),
    ('val_cfg.fp61', True, "ValLoop has no argument 'fp61'"),
    ('test_cfg.fp61', True, "TestLoop has no argument 'fp61'"),
    ('test_evaluator.iou_metric', ['mIoU'], "IoUMetric has no argument 'iou_metric'; did you "
                                            "mean 'iou_metrics'"),
    ('param_scheduler.1.type', 'PolyLRR', "'PolyLRR' is not a registered parameter scheduler "
                                          "type; did you mean 'PolyLR'"),
], ids=lambda value: value if isinstance(value, str) and '.' in value and ' ' not in value else '')
def test_cfg_options_key_checked_in_every_section(key, value, phrase):
    with pytest.raises(ConfigKeyError) as error:
        load_config(DEMO_CONFIG, {key: value})
    message = str(error.value)
    assert message.startswith(f'--cfg-options key {key}')
    assert phrase in message


def test_all_bad_keys_reported_together_and_good_keys_pass():
    with pytest.raises(ConfigKeyError) as error:
        load_config(DEMO_CONFIG, {'train_dataloader.batch_sise': 4, 'trian_cfg.max_iters': 3,
                                  'optim_wrapper.optimizer.lrr': 0.1})
    message = str(error.value)
    assert message.count('--cfg-options key') == 3
    assert "train_dataloader.batch_sise: DataLoader has no argument 'batch_sise'" in message
    assert "the config has no top-level key 'trian_cfg'; did you mean 'train_cfg'" in message
    assert "optim_wrapper.optimizer.lrr: SGD has no argument 'lrr'; did you mean 'lr'" in message
    cfg = load_config(DEMO_CONFIG, {
        'train_dataloader.pin_memory': True, 'train_dataloader.sampler.shuffle': False,
        'train_dataloader.dataset.pipeline.2.keep_ratio': False,
        'optim_wrapper.optimizer.nesterov': True, 'param_scheduler.1.power': 1.0,
        'default_hooks.checkpoint.save_last': False, 'randomness.deterministic': True,
        'nonfinite_loss_limit': 2, 'skip_data_check': True})
    assert cfg.train_dataloader.pin_memory and cfg.optim_wrapper.optimizer.nesterov


@pytest.mark.parametrize('broken', ['top', 'base'])
def test_config_that_does_not_parse_names_file_and_line(tmp_path, broken):
    base, top = tmp_path / 'base.py', tmp_path / 'top.py'
    base.write_text('x = 1\n' + ('y = dict(a=1,\n    b=2 c=3)\n' if broken == 'base' else ''))
    top.write_text("_base_ = ['./base.py']\n"
                   + ('z = [1, 2\nw = 3\n' if broken == 'top' else 'z = 2\n'))
    with pytest.raises(ConfigSyntaxError) as error:
        load_config(top)
    message = str(error.value)
    assert isinstance(error.value, UserError)
    if broken == 'base':
        assert message.startswith(f'config file {base} does not parse: ')
        assert 'at line 3: b=2 c=3)' in message
    else:
        assert message.startswith(f'config file {top} does not parse: ')
        assert 'line 2' in message


def poly_lr(step, base_lr, eta_min, begin, end, power=0.9):
    """mmengine's PolyLR in closed form (it reaches ``eta_min`` at ``end - 1``)."""
    return (base_lr - eta_min) * (1 - (step - begin) / (end - 1 - begin)) ** power + eta_min


def lr_after(cfg, steps: int) -> float:
    """The learning rate of ``cfg``'s schedulers after ``steps`` iterations."""
    optimizer = OptimWrapper(torch.optim.SGD(nn.Linear(1, 1).parameters(),
                                             lr=cfg.optim_wrapper.optimizer.lr))
    schedulers = [PARAM_SCHEDULERS.build(dict(s), default_args=dict(optimizer=optimizer))
                  for s in cfg.param_scheduler]
    for _ in range(steps):
        for scheduler in schedulers:
            scheduler.step()
    return optimizer.param_groups[0]['lr']


def test_schedule_follows_overridden_max_iters(monkeypatch):
    logged = []
    monkeypatch.setattr(config_module, 'print_log', lambda msg, **kw: logged.append(msg))
    cfg = prepare_config(DEMO_CONFIG, {'train_cfg.max_iters': 150})
    assert [s.end for s in cfg.param_scheduler] == [20, 150]  # the warm-up keeps its end
    assert cfg.train_cfg.val_interval == 150  # was 300
    assert cfg.default_hooks.checkpoint.interval == 100  # shorter than the run: kept
    assert lr_after(cfg, 100) == pytest.approx(poly_lr(100, 0.1, 1e-4, 20, 150), rel=1e-4)
    assert lr_after(cfg, 100) == pytest.approx(0.0419, abs=1e-4)  # 0.0738 with end=300
    follow = [m for m in logged if m.startswith('train_cfg.max_iters')]
    assert follow == ['train_cfg.max_iters 300 -> 150: param_scheduler.1.end (PolyLR), '
                      'train_cfg.val_interval follow it (set them with --cfg-options to '
                      'choose otherwise)']

    paper = prepare_config(B2_CONFIG, {'train_cfg.max_iters': 150,
                                       'default_hooks.checkpoint.interval': 1000})
    assert paper.param_scheduler[0].end == 150 and paper.train_cfg.val_interval == 150
    assert paper.default_hooks.checkpoint.interval == 1000  # set by the user: kept
    kept = prepare_config(DEMO_CONFIG, {'train_cfg.max_iters': 150, 'param_scheduler.1.end': 300})
    assert kept.param_scheduler[1].end == 300
    short = prepare_config(DEMO_CONFIG, {'train_cfg.max_iters': 10})
    assert short.param_scheduler[1].end == 300  # begins at 20: never runs, left alone


def test_a_section_override_is_the_users_choice_too():
    """``default_hooks.checkpoint=dict(..., interval=1000)`` sets the interval as much as
    ``default_hooks.checkpoint.interval=1000`` does; the keys outside it still follow."""
    hook = dict(type='CheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=2)
    cfg = prepare_config(DEMO_CONFIG, {'train_cfg.max_iters': 50,
                                       'default_hooks.checkpoint': hook})
    assert cfg.default_hooks.checkpoint.interval == 1000
    assert cfg.train_cfg.val_interval == 50 and cfg.param_scheduler[1].end == 50
    loop = prepare_config(DEMO_CONFIG, {'train_cfg': dict(type='IterBasedTrainLoop',
                                                          max_iters=50, val_interval=400)})
    assert loop.train_cfg.val_interval == 400 and loop.param_scheduler[1].end == 50
