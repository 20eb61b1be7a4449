"""The mmseg RepVGG backbone: dilation plans, pretrained loading, freezing, errors."""
from pathlib import Path

import repseg  # noqa: I001  (first: mmcv.ops stand-ins, backbone registration)
import pytest
import torch
from mmseg.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from repseg.checkpoint import CheckpointError, export_state_dict
from repseg.mmseg.backbone import PretrainedNotFoundError, RepVGGBackbone
from repseg.mmseg.builder import build_segmentor, load_config, use_plain_bn

REPO = Path(__file__).resolve().parents[1]
B1G2 = REPO / 'configs' / 'pspnet_repvgg_b1g2.py'

# Every block whose 3x3 is strided or dilated, as (code stage, block, dilation, stride);
# code stage 0 is the stem. Written from REFERENCES section 4 (B archs: 4, 6, 16, 1
# blocks): stages 3 and 4 lose their stride; "full" dilates all of stage 3 by 2 and
# stage 4 by 4, "fast" only the last four blocks of stage 3 and the block of stage 4.
STRIDED = [(0, 0, 1, 2), (1, 0, 1, 2), (2, 0, 1, 2)]
EXPECTED = {
    'full': STRIDED + [
        (3, 0, 2, 1), (3, 1, 2, 1), (3, 2, 2, 1), (3, 3, 2, 1),
        (3, 4, 2, 1), (3, 5, 2, 1), (3, 6, 2, 1), (3, 7, 2, 1),
        (3, 8, 2, 1), (3, 9, 2, 1), (3, 10, 2, 1), (3, 11, 2, 1),
        (3, 12, 2, 1), (3, 13, 2, 1), (3, 14, 2, 1), (3, 15, 2, 1),
        (4, 0, 4, 1)],
    'fast': STRIDED + [
        (3, 12, 2, 1), (3, 13, 2, 1), (3, 14, 2, 1), (3, 15, 2, 1),
        (4, 0, 4, 1)],
}


def _blocks(backbone):
    yield 0, 0, backbone.stem
    for stage, blocks in enumerate(backbone.stages, start=1):
        for index, block in enumerate(blocks):
            yield stage, index, block


def _dilated_or_strided(backbone):
    """The table of ``backbone`` as built, checking each block's branches agree."""
    table = []
    for stage, index, block in _blocks(backbone):
        conv = block.fused if block.is_fused else block.conv3x3.conv
        dilation, stride = conv.dilation[0], conv.stride[0]
        assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation)
        assert conv.stride == (stride, stride)
        if not block.is_fused:
            one = block.conv1x1.conv
            assert (one.stride, one.padding, one.dilation) == ((stride, stride), (0, 0), (1, 1))
        if dilation > 1 or stride != 1:
            table.append((stage, index, dilation, stride))
    return table


@pytest.mark.parametrize('arch', ['B1g2', 'B2'])
@pytest.mark.parametrize('mode', ['full', 'fast'])
def test_dilation_plan_table(arch, mode):
    backbone = RepVGGBackbone(arch=arch, dilation=mode)
    assert _dilated_or_strided(backbone) == EXPECTED[mode]


def test_unknown_dilation_mode_names_valid_modes():
    with pytest.raises(ValueError) as error:
        RepVGGBackbone(arch='A0', dilation='half')
    message = str(error.value)
    assert "'half'" in message and "'full'" in message and "'fast'" in message


def _a0_backbone_cfg(checkpoint, deploy=False):
    cfg = load_config(B1G2, {'model.backbone.arch': 'A0',
                             'model.backbone.deploy': deploy,
                             'model.backbone.init_cfg.checkpoint': str(checkpoint)})
    return use_plain_bn(cfg).model.backbone


def _assert_backbone_equals_source(backbone, source_state):
    state = backbone.state_dict()
    assert set(state) == {k for k in source_state if not k.startswith('head.')}
    for key, value in state.items():
        assert torch.equal(value, source_state[key]), key


@pytest.mark.parametrize('layout', ['official', 'timm', 'mmpretrain'])
def test_pretrained_init_from_each_layout(layout, tmp_path, randomize_bn):
    source = randomize_bn(repseg.create_model('A0'), seed=1).state_dict()
    path = tmp_path / f'a0_{layout}.pth'
    torch.save({'state_dict': export_state_dict(source, layout)}, path)
    backbone = MODELS.build(_a0_backbone_cfg(path))
    backbone.init_weights()
    _assert_backbone_equals_source(backbone, source)


def test_pretrained_init_of_a_real_config(tmp_path, randomize_bn):
    source = randomize_bn(repseg.create_model('B1g2'), seed=2).state_dict()
    path = tmp_path / 'RepVGG-B1g2-train.pth'
    torch.save(export_state_dict(source, 'official'), path)
    cfg = use_plain_bn(load_config(B1G2, {'model.backbone.init_cfg.checkpoint': str(path)}))
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    _assert_backbone_equals_source(backbone, source)


def _fused_a0_checkpoint(tmp_path, randomize_bn):
    fused = repseg.reparameterize(randomize_bn(repseg.create_model('A0'), seed=3))
    path = tmp_path / 'RepVGG-A0-deploy.pth'
    torch.save(export_state_dict(fused.state_dict(), 'official'), path)
    return path, fused.state_dict()


def test_fused_checkpoint_into_deploy_backbone(tmp_path, randomize_bn):
    path, source = _fused_a0_checkpoint(tmp_path, randomize_bn)
    backbone = MODELS.build(_a0_backbone_cfg(path, deploy=True))
    backbone.init_weights()
    _assert_backbone_equals_source(backbone, source)


def test_fused_checkpoint_into_train_time_backbone_asks_for_deploy(tmp_path, randomize_bn):
    path, _ = _fused_a0_checkpoint(tmp_path, randomize_bn)
    backbone = MODELS.build(_a0_backbone_cfg(path))
    with pytest.raises(CheckpointError, match='deploy=True'):
        backbone.init_weights()


def _bn_stats(modules):
    return [bn.running_mean.clone() for m in modules for bn in m.modules()
            if isinstance(bn, _BatchNorm)]


def _train_step(backbone):
    backbone.train()
    backbone(torch.randn(1, 3, 64, 64))


def test_frozen_stages_freeze_parameters_and_statistics():
    backbone = RepVGGBackbone(arch='A0', frozen_stages=2)
    frozen = [backbone.stem, backbone.stages[0], backbone.stages[1]]
    before_frozen, before_stage3 = _bn_stats(frozen), _bn_stats([backbone.stages[2]])
    _train_step(backbone)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in backbone.stages[2].parameters())
    assert all(torch.equal(a, b) for a, b in zip(before_frozen, _bn_stats(frozen)))
    assert not any(torch.equal(a, b)
                   for a, b in zip(before_stage3, _bn_stats([backbone.stages[2]])))


def test_norm_eval_keeps_every_bn_in_eval():
    backbone = RepVGGBackbone(arch='A0', norm_eval=True)
    before = _bn_stats([backbone])
    _train_step(backbone)
    assert backbone.training
    assert all(not m.training for m in backbone.modules() if isinstance(m, _BatchNorm))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats([backbone])))


def test_missing_default_pretrained_file_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative checkpoint path does not exist here
    cfg = load_config(REPO / 'configs' / 'pspnet_repvgg_b2.py')
    path = cfg.model.backbone.init_cfg.checkpoint
    model = build_segmentor(cfg)
    with pytest.raises(PretrainedNotFoundError) as error:
        model.init_weights()
    message = str(error.value)
    assert path in message and 'init_cfg=None' in message
    assert 'github.com/DingXiaoH/RepVGG' in message
