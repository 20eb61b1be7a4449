"""The six PSPNet configs: they build, run at output stride 8, and fuse exactly."""
from pathlib import Path

import repseg  # noqa: I001  (first: mmcv.ops stand-ins, backbone registration)
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from repseg.analysis import count_flops, count_params
from repseg.mmseg.builder import ConfigKeyError, build_segmentor, load_config, use_plain_bn

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
# config -> (decode head input, auxiliary head input), REFERENCES section 4 for RepVGG;
# ResNet-D8 stages 4 and 3 give 2048 and 1024.
HEAD_INPUTS = {
    'pspnet_repvgg_b1g2': (2048, 512),
    'pspnet_repvgg_b1g2_fast': (2048, 512),
    'pspnet_repvgg_b2': (2560, 640),
    'pspnet_repvgg_b2_fast': (2560, 640),
    'pspnet_r50_d8': (2048, 1024),
    'pspnet_r101_d8': (2048, 1024),
}
REPVGG_CONFIGS = [name for name in HEAD_INPUTS if 'repvgg' in name]
# Deploy parameter counts of the classifiers (REFERENCES section 1) minus the
# 1000-class linear layer: what a fused segmentation backbone must hold.
FUSED_BACKBONE_PARAMS = {'B1g2': 41_360_104 - (2048 * 1000 + 1000),
                         'B2': 80_315_112 - (2560 * 1000 + 1000)}


def _build(name):
    cfg = load_config(CONFIGS / f'{name}.py', {'model.backbone.init_cfg': None,
                                                'model.pretrained': None})
    return build_segmentor(cfg)


# Segmentors built by the first test, handed to the fusion test to save build time.
_BUILT = {}


@pytest.mark.parametrize('name', list(HEAD_INPUTS))
def test_config_builds_and_runs_at_output_stride_8(name):
    model = _build(name)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.extract_feat(x)
        logits = model._forward(x)
    assert features[-1].shape[-2:] == (8, 8)
    assert logits.shape == (1, 19, 8, 8)
    for head, expected in zip((model.decode_head, model.auxiliary_head), HEAD_INPUTS[name]):
        assert head.in_channels == expected
        assert features[head.in_index].shape[1] == expected
        if hasattr(model.backbone, 'out_channels'):
            assert model.backbone.out_channels[head.in_index] == expected
    if name in REPVGG_CONFIGS:
        _BUILT[name] = model


@pytest.mark.parametrize('name', REPVGG_CONFIGS)
def test_fused_segmentor_equals_train_time_segmentor(name, randomize_bn):
    model = randomize_bn(_BUILT.pop(name, None) or _build(name)).double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model._forward(x)
        fused = repseg.reparameterize(model, inplace=True)
        actual = fused._forward(x)
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert error < 1e-9
    assert not fused.training
    assert not any(hasattr(m, 'conv1x1') for m in fused.modules())
    assert count_params(fused.backbone) == FUSED_BACKBONE_PARAMS[fused.backbone.arch]

    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    repseg.reparameterize(fused, inplace=True)
    assert convs == [m for m in fused.modules() if isinstance(m, nn.Conv2d)]  # idempotent


def test_cfg_options_typos_are_refused_with_suggestions():
    path = CONFIGS / 'pspnet_repvgg_b1g2.py'
    with pytest.raises(ConfigKeyError, match=r"'model\.backbon'.*'model\.backbone'"):
        load_config(path, {'model.backbon.arch': 'A0'})
    with pytest.raises(ConfigKeyError, match="'load_from'"):
        load_config(path, {'lod_from': 'x.pth'})
    with pytest.raises(ConfigKeyError, match='list of'):
        load_config(path, {'train_dataloader.dataset.pipeline.99.type': 'Resize'})
    cfg = load_config(path, {'model.backbone.with_cp': True, 'randomness.seed': 0,
                             'model.backbone.arch': 'A0'})
    assert cfg.model.backbone.with_cp and cfg.randomness.seed == 0
    assert cfg.model.backbone.arch == 'A0'


def test_use_plain_bn_replaces_sync_bn_everywhere_in_the_model():
    cfg = load_config(CONFIGS / 'pspnet_repvgg_b2.py')
    cfg.model.neck = [dict(type='X', inner=dict(norm_cfg=dict(type='SyncBN', eps=1e-3)))]
    assert 'SyncBN' in str(cfg.model)
    use_plain_bn(cfg)
    assert 'SyncBN' not in str(cfg.model)
    assert cfg.model.neck[0]['inner']['norm_cfg'] == dict(type='BN', eps=1e-3)
    assert cfg.model.backbone.norm_cfg == dict(type='BN', requires_grad=True)
    assert isinstance(cfg, Config)


def test_count_flops_counts_multiply_adds():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_params(conv) == 8 * 3 * 9 + 8
    assert count_flops(conv, (16, 16)) == pytest.approx(8 * 3 * 9 * 16 * 16 / 1e9)
