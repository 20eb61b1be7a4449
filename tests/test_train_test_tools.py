"""tools/train.py and tools/test.py end to end on a tiny toy city, and the config
adaptation behind them (CPU: BN, gloo, DDP wrapper; atomic checkpoints)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmseg.datasets import CityscapesDataset
from mmseg.registry import METRICS

from repseg.data.cityscapes_layout import train_id_to_label_id_lut
from repseg.data.toy_city import make_toy_cityscapes
from repseg.mmseg import config as config_module
from repseg.mmseg.hooks import CITYSCAPES_EVAL_SCRIPT
from repseg.mmseg.runner import configure_test, prepare_config, run_test, run_train

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'


def tiny_options(data_root, **extra):
    """``--cfg-options`` for a few fast iterations of a narrow demo model on ``data_root``."""
    options = {f'{loader}.dataset.data_root': str(data_root)
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options[f'{loader}.num_workers'] = 0
        options[f'{loader}.persistent_workers'] = False
    options.update({
        'train_dataloader.batch_size': 2, 'train_cfg.max_iters': 2, 'train_cfg.val_interval': 100,
        'default_hooks.checkpoint.interval': 2, 'default_hooks.logger.interval': 1,
        'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 8})
    options.update(extra)
    return options


def as_cli(options):
    return ['--cfg-options'] + [f'{key}={value}' for key, value in options.items()]


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_city')
    make_toy_cityscapes(root, num_train=8, num_val=4, size=(64, 128), seed=3)
    return root


@pytest.fixture(scope='module')
def train_run(toy_root, tmp_path_factory):
    """Train 2 iterations through the CLI, validating and logging for TensorBoard at the
    end; returns the work dir and the finished process (its output)."""
    work_dir = tmp_path_factory.mktemp('train')
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools/train.py'), str(DEMO_CONFIG), '--work-dir',
         str(work_dir), '--tensorboard',
         *as_cli(tiny_options(toy_root))],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Iter(train) [2/2]' in result.stdout and 'Iter(val) [4/4]' in result.stdout
    return work_dir, result


@pytest.fixture(scope='module')
def trained(train_run):
    """The work dir of :func:`train_run` (checkpoint ``iter_2.pth``)."""
    return train_run[0]


def test_train_writes_checkpoint_and_pointer(trained):
    pointer = (trained / 'last_checkpoint').read_text()
    assert Path(pointer) == trained / 'iter_2.pth'
    assert Path(pointer).is_file()
    assert not list(trained.glob('*.tmp')) and not list(trained.glob('.*.tmp'))


def test_test_cli_prints_table_writes_json_and_labelids(trained, toy_root, tmp_path):
    out = tmp_path / 'labelids'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools/test.py'), str(DEMO_CONFIG),
         str(trained / 'iter_2.pth'), '--work-dir', str(tmp_path), '--out', str(out),
         *as_cli(tiny_options(toy_root))],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'per class results' in result.stdout
    for header in ('Class', 'IoU', 'Acc', 'road', 'sky'):
        assert header in result.stdout
    assert 'mIoU' in result.stdout.splitlines()[-1]

    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    for key in ('mIoU', 'mAcc', 'aAcc'):
        assert 0 <= metrics[key] <= 100
    assert set(metrics['per_class']['road']) == {'IoU', 'Acc'}
    assert metrics['per_class']['train']['IoU'] is None  # absent in the toy city: NaN
    assert metrics['checkpoint'].endswith('iter_2.pth')
    printed = printed_table(result.stdout)
    assert len(printed) == 19
    for name, (iou, acc) in printed.items():
        assert (metrics['per_class'][name]['IoU'], metrics['per_class'][name]['Acc']) == (iou, acc)
    present = [v['IoU'] for v in metrics['per_class'].values() if v['IoU'] is not None]
    assert sum(present) / len(present) == pytest.approx(metrics['mIoU'], abs=0.011)

    written = sorted(out.glob('*_labelIds.png'))
    assert [p.name for p in written] == [f'toycity_000001_00000{i}_labelIds.png' for i in range(4)]
    valid_ids = set(train_id_to_label_id_lut()[:19].tolist())
    for path in written:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (64, 128) and labels.dtype == np.uint8
        assert set(np.unique(labels).tolist()) <= valid_ids
    assert_cityscapes_evaluation_agrees(result.stdout, metrics, tmp_path)


def assert_cityscapes_evaluation_agrees(test_stdout, metrics, work_dir):
    """Run the command test.py printed (cityscapesscripts' own pixel-level evaluation, with
    its instance-level scores) and compare its class IoUs and mean with test.py's."""
    lines = [line.strip() for line in test_stdout.splitlines()]
    command = next(line for line in lines if line.endswith(CITYSCAPES_EVAL_SCRIPT))
    env = dict(os.environ, PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    evaluation = subprocess.run(['bash', '-c', command], capture_output=True, text=True,
                                env=env)
    assert evaluation.returncode == 0, evaluation.stdout[-2000:] + evaluation.stderr[-2000:]
    result = json.loads((work_dir / 'resultPixelLevelSemanticLabeling.json').read_text())
    assert abs(100 * result['averageScoreClasses'] - metrics['mIoU']) <= 0.01
    assert not math.isnan(result['averageScoreInstClasses'])  # read the instanceIds
    assert len(metrics['per_class']) == 19
    for name, values in metrics['per_class'].items():
        score, expected = result['classScores'][name], values['IoU']
        if expected is None:
            assert math.isnan(score), name
        else:
            assert abs(100 * score - expected) <= 0.01, name


def printed_table(stdout: str) -> dict:
    """``{class: (IoU, Acc)}`` from mmseg's per-class table (None for nan)."""
    rows = re.findall(r'^\|\s*([a-z][a-z ]*?)\s*\|\s*([\d.]+|nan)\s*\|\s*([\d.]+|nan)\s*\|$',
                      stdout, re.MULTILINE)
    value = lambda text: None if text == 'nan' else float(text)  # noqa: E731
    return {name: (value(iou), value(acc)) for name, iou, acc in rows}


def test_test_evaluator_ignores_255_and_reports_percent():
    """The metric tools/test.py sets up, on a 2x4 frame with two 255 pixels, against IoU
    by hand: road 1/2, sidewalk 3/4, building 1/1 (255 pixels in neither union)."""
    cfg = prepare_config(DEMO_CONFIG)
    configure_test(cfg)
    metric = METRICS.build(cfg.test_evaluator)
    metric.dataset_meta = dict(classes=CityscapesDataset.METAINFO['classes'])
    label = torch.tensor([[0, 0, 1, 255], [1, 1, 2, 255]])
    prediction = torch.tensor([[0, 1, 1, 2], [1, 1, 2, 0]])
    metric.process([], [dict(pred_sem_seg=dict(data=prediction[None]),
                             gt_sem_seg=dict(data=label[None]))])
    summary = metric.evaluate(1)
    assert summary['mIoU'] == pytest.approx(100 * (1 / 2 + 3 / 4 + 1) / 3, abs=0.01)
    assert summary['aAcc'] == pytest.approx(100 * 5 / 6, abs=0.01)
    assert metric.per_class['road'] == dict(IoU=50.0, Acc=50.0)
    assert metric.per_class['sidewalk'] == dict(IoU=75.0, Acc=100.0)
    assert metric.per_class['building'] == dict(IoU=100.0, Acc=100.0)
    assert metric.per_class['wall'] == dict(IoU=None, Acc=None)


def test_label_id_mapping_is_the_official_one():
    lut = train_id_to_label_id_lut()
    # road, sidewalk, ..., bicycle (cityscapesscripts' labels.py)
    assert lut[:19].tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                 31, 32, 33]


@pytest.fixture(scope='module')
def default_test(trained, toy_root, tmp_path_factory):
    """``run_test`` with default settings (fused) writing labelIds: (metrics, work dir, out)."""
    work_dir, out = tmp_path_factory.mktemp('test_default'), tmp_path_factory.mktemp('out')
    metrics = run_test(DEMO_CONFIG, trained / 'iter_2.pth', work_dir=str(work_dir),
                       out=str(out), cfg_options=tiny_options(toy_root))
    return metrics, work_dir, out


def test_fused_by_default_same_labels_and_miou_as_no_fuse(default_test, trained, toy_root,
                                                          tmp_path):
    fused, fused_dir, fused_out = default_test
    unfused = run_test(DEMO_CONFIG, trained / 'iter_2.pth', fuse=False,
                       work_dir=str(tmp_path), out=str(tmp_path / 'out'),
                       cfg_options=tiny_options(toy_root))
    for key in ('mIoU', 'mAcc', 'aAcc', 'per_class'):
        assert fused[key] == unfused[key], key
    fused_files = sorted(fused_out.glob('*_labelIds.png'))
    assert len(fused_files) == 4
    for path in fused_files:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(labels, cv2.imread(str(tmp_path / 'out' / path.name),
                                                 cv2.IMREAD_UNCHANGED)), path.name
    assert json.loads((fused_dir / 'metrics.json').read_text())['fused'] is True
    assert json.loads((tmp_path / 'metrics.json').read_text())['fused'] is False


def test_tensorboard_event_file_holds_loss_lr_and_miou(trained):
    """The TensorBoard backend's scalars equal those mmengine's JSON backend wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(trained.glob('*/vis_data/events.out.tfevents.*'))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    json_lines = (events[0].parent / 'scalars.json').read_text().splitlines()
    logged = [json.loads(line) for line in json_lines]
    for tag in ('loss', 'lr', 'mIoU', 'aAcc'):
        expected = [(r['step'], r[tag]) for r in logged if tag in r]
        found = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        assert [s for s, _ in found] == [s for s, _ in expected] and expected, tag
        assert np.allclose([v for _, v in found], [v for _, v in expected], rtol=1e-6), tag
    assert [e.step for e in accumulator.Scalars('mIoU')] == [2]


def test_tools_print_no_known_harmless_warnings(train_run):
    _, result = train_run
    for notice in ('build_loss', 'avg_non_ignore', 'The draw is False'):
        assert notice not in result.stderr
    for notice in ('"FileClient" will be deprecated', 'HardDiskBackend', 'prefix is not set'):
        assert notice not in result.stdout


def test_fp16_tta_and_show_dir_in_process(default_test, trained, toy_root, tmp_path):
    metrics = default_test[0]
    half = run_test(DEMO_CONFIG, trained / 'iter_2.pth', work_dir=str(tmp_path / 'fp16'),
                fp16=True, show_dir=str(tmp_path / 'show'), cfg_options=tiny_options(toy_root))
    assert abs(half['aAcc'] - metrics['aAcc']) < 2.0
    assert list((tmp_path / 'show').rglob('*.png'))
    tta = run_test(DEMO_CONFIG, trained / 'iter_2.pth', work_dir=str(tmp_path / 'tta'), tta=True,
               cfg_options=tiny_options(toy_root))
    assert 0 <= tta['mIoU'] <= 100
    assert json.loads((tmp_path / 'tta' / 'metrics.json').read_text())['tta'] is True


def test_cpu_config_uses_bn_gloo_ddp_and_atomic_checkpoints(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(config_module, 'print_log', lambda msg, **kwargs: logged.append(msg))
    cfg = prepare_config(ROOT / 'configs/pspnet_repvgg_b2.py', work_dir=str(tmp_path),
                         launcher='pytorch')
    assert 'SyncBN' not in str(cfg.model.to_dict())
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert any('using BN instead of SyncBN' in message for message in logged)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'DeviceAwareDDP'
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert cfg.work_dir == str(tmp_path)
    default = prepare_config(ROOT / 'configs/pspnet_repvgg_b2.py')
    assert default.work_dir == str(Path('work_dirs') / 'pspnet_repvgg_b2')
    assert 'model_wrapper_cfg' not in default


def test_resume_from_a_work_dir_config_written_by_an_older_repseg(trained, toy_root, tmp_path):
    """A config as ``tools/train.py`` dumps it into a work dir names repseg's modules and
    types literally; ``--resume`` with it must keep working after a refactoring (and
    ``run_train`` returns the Runner at ``max_iters``)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.custom_imports = dict(imports=['repseg', 'repseg.mmseg.hooks', 'repseg.mmseg.ddp',
                                       'repseg.mmseg.nonfinite', 'repseg.mmseg.frame_guard'],
                              allow_failed_imports=False)
    cfg.default_hooks.checkpoint.type = 'AtomicCheckpointHook'
    cfg.custom_hooks = [dict(type='NonFiniteLossHook', limit=1)]
    cfg.model_wrapper_cfg = dict(type='DeviceAwareDDP', broadcast_buffers=False,
                                 find_unused_parameters=False)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        pipeline = cfg[loader].dataset.pipeline
        pipeline[0].type, pipeline[1].type = 'CheckedLoadImageFromFile', 'CheckedLoadAnnotations'
    dumped = tmp_path / 'pspnet_repvgg_a0_toycity.py'
    cfg.dump(str(dumped))
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'iter_2.pth').write_bytes((trained / 'iter_2.pth').read_bytes())
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_2.pth'))

    options = tiny_options(toy_root, **{'train_cfg.max_iters': 3,
                                        'default_hooks.checkpoint.interval': 1})
    runner = run_train(dumped, work_dir=str(work_dir), resume=True, cfg_options=options)
    assert runner.iter == 3
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['iter_2.pth', 'iter_3.pth']
    from mmseg.registry import MODEL_WRAPPERS, TRANSFORMS
    assert MODEL_WRAPPERS.get('DeviceAwareDDP') and TRANSFORMS.get('CheckedLoadAnnotations')
