"""The demo config (a small PSPNet-RepVGG-A0 for the toy city on a CPU) and the demo's
majority-class baseline."""
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmseg.evaluation import IoUMetric

from repseg.mmseg.builder import build_segmentor, load_config
from repseg.mmseg.runner import config_problems, prepare_config

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'


def load_demo_tool():
    spec = importlib.util.spec_from_file_location('demo_tool', ROOT / 'tools/demo.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def cfg():
    return load_config(DEMO_CONFIG)


def test_demo_config_is_small_and_cpu_ready(cfg):
    assert cfg.model.backbone.arch == 'A0' and cfg.model.backbone.init_cfg is None
    assert cfg.model.backbone.dilation in ('full', 'fast')
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        assert cfg.model[part].norm_cfg.type == 'BN'
    assert cfg.model.decode_head.in_channels == 1280 and cfg.model.auxiliary_head.in_channels == 192
    assert cfg.model.test_cfg == dict(mode='whole')
    assert cfg.train_dataloader.batch_size == 8
    assert cfg.train_dataloader.dataset.data_root.rstrip('/') == 'data/toy_city'
    assert cfg.test_dataloader.dataset.data_root == cfg.train_dataloader.dataset.data_root
    assert 200 <= cfg.train_cfg.max_iters <= 500
    assert cfg.param_scheduler[-1].end == cfg.train_cfg.max_iters
    crop = next(t for t in cfg.train_pipeline if t.type == 'RandomCrop').crop_size
    assert tuple(cfg.model.data_preprocessor.size) == tuple(crop)
    assert not any(t.type == 'Resize' for t in cfg.test_dataloader.dataset.pipeline)
    assert config_problems(prepare_config(DEMO_CONFIG), 'train') == []


def test_demo_model_predicts_full_resolution(cfg):
    model = build_segmentor(cfg)
    with torch.no_grad():
        logits = model._forward(torch.randn(1, 3, 128, 256))
    assert logits.shape == (1, 19, 16, 32)  # output stride 8
    assert sum(p.numel() for p in model.parameters()) < 10_000_000


def test_majority_baseline_matches_mmseg_iou(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'gtFine' / 'val' / 'city'
    folder.mkdir(parents=True)
    labels = []
    for index in range(3):
        label = rng.choice([0, 2, 10, 13, 255], size=(16, 32), p=[0.4, 0.2, 0.2, 0.1, 0.1])
        label = label.astype(np.uint8)
        cv2.imwrite(str(folder / f'city_000000_{index:06d}_gtFine_labelTrainIds.png'), label)
        labels.append(label)
    miou, top = load_demo_tool().majority_baseline(tmp_path / 'gtFine' / 'val')
    assert top == 0
    results = [IoUMetric.intersect_and_union(torch.zeros(l.shape, dtype=torch.long),
                                             torch.from_numpy(l.astype(np.int64)), 19, 255)
               for l in labels]
    totals = [sum(column) for column in zip(*results)]
    iou = IoUMetric.total_area_to_metrics(*totals, ['mIoU'])['IoU']
    assert miou == pytest.approx(100 * np.nanmean(iou), abs=1e-6)
