"""Structural re-parameterization, checked in float64 against direct convolutions."""
import pytest
import torch
import torch.nn.functional as F

import repseg
from repseg.models.fusion import (BatchNormStats, fold_batch_norm, identity_kernel,
                                  pad_to_size, sum_branches)

pytestmark = pytest.mark.usefixtures('single_thread')

DTYPE = torch.float64


def random_bn(channels, gen, eps=1e-5):
    def uniform(low, high):
        return low + (high - low) * torch.rand(channels, generator=gen, dtype=DTYPE)
    return BatchNormStats(uniform(-1, 1), uniform(0.2, 2), uniform(-2, 2), uniform(-1, 1), eps)


def batch_norm(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        training=False, eps=bn.eps)


def relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


# ---------------------------------------------------------------- pure functions

@pytest.mark.parametrize('eps', [1e-5, 1e-3, 0.1])
@pytest.mark.parametrize('kernel_size,groups', [(3, 1), (1, 1), (3, 2)])
def test_fold_batch_norm_matches_conv_then_bn(eps, kernel_size, groups):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 9, 7, generator=gen, dtype=DTYPE)
    kernel = torch.randn(6, 8 // groups, kernel_size, kernel_size, generator=gen, dtype=DTYPE)
    bn = random_bn(6, gen, eps)
    pad = kernel_size // 2
    expected = batch_norm(F.conv2d(x, kernel, padding=pad, groups=groups), bn)
    fused_kernel, fused_bias = fold_batch_norm(kernel, bn)
    actual = F.conv2d(x, fused_kernel, fused_bias, padding=pad, groups=groups)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_identity_kernel_is_identity(groups):
    x = torch.randn(2, 8, 5, 6, dtype=DTYPE)
    kernel = identity_kernel(8, groups, dtype=DTYPE)
    assert kernel.shape == (8, 8 // groups, 1, 1)
    assert torch.equal(F.conv2d(x, kernel, groups=groups), x)


def test_identity_kernel_rejects_indivisible_groups():
    with pytest.raises(ValueError, match='divisible'):
        identity_kernel(6, 4)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('dilation', [1, 2, 4])
def test_padded_1x1_equals_1x1(dilation, stride):
    x = torch.randn(1, 4, 11, 13, dtype=DTYPE)
    kernel = torch.randn(5, 4, 1, 1, dtype=DTYPE)
    padded = pad_to_size(kernel, 3)
    assert padded.shape == (5, 4, 3, 3)
    expected = F.conv2d(x, kernel, stride=stride, padding=0)
    actual = F.conv2d(x, padded, stride=stride, padding=dilation, dilation=dilation)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_pad_to_size_rejects_bad_sizes():
    with pytest.raises(ValueError):
        pad_to_size(torch.zeros(1, 1, 3, 3), 1)
    with pytest.raises(ValueError):
        pad_to_size(torch.zeros(1, 1, 1, 1), 4)


@pytest.mark.parametrize('dilation', [1, 3])
def test_sum_branches_equals_sum_of_convs(dilation):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 10, 10, generator=gen, dtype=DTYPE)
    k3, k1 = (torch.randn(4, 4, s, s, generator=gen, dtype=DTYPE) for s in (3, 1))
    b3, b1 = (torch.randn(4, generator=gen, dtype=DTYPE) for _ in range(2))
    expected = (F.conv2d(x, k3, b3, padding=dilation, dilation=dilation)
                + F.conv2d(x, k1, b1) + x)
    kernel, bias = sum_branches([(k3, b3), (k1, b1), (identity_kernel(4, dtype=DTYPE),
                                                      torch.zeros(4, dtype=DTYPE))])
    actual = F.conv2d(x, kernel, bias, padding=dilation, dilation=dilation)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- blocks

def block_oracle(block, x, stride, dilation, groups):
    """The train-time block written out with functional ops (REFERENCES section 2),
    reading only the block's weights and statistics."""
    def bn(out, norm):
        return F.batch_norm(out, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            training=False, eps=norm.eps)

    out = (bn(F.conv2d(x, block.conv3x3.conv.weight, None, stride, dilation, dilation, groups),
              block.conv3x3.bn)
           + bn(F.conv2d(x, block.conv1x1.conv.weight, None, stride, 0, 1, groups),
                block.conv1x1.bn))
    if x.shape[1] == out.shape[1] and stride == 1:
        out = out + bn(x, block.identity)
    if not isinstance(block.se, torch.nn.Identity):
        se = block.se
        pooled = out.mean(dim=(2, 3), keepdim=True)
        gate = torch.relu(F.conv2d(pooled, se.down.weight, se.down.bias))
        out = out * torch.sigmoid(F.conv2d(gate, se.up.weight, se.up.bias))
    return torch.relu(out)


BLOCK_CASES = {  # in, out, stride, dilation, groups, use_se
    'identity': (8, 8, 1, 1, 1, False),
    'no-identity-channels': (8, 16, 1, 1, 1, False),
    'stride2': (8, 8, 2, 1, 1, False),
    'stride2-grouped': (16, 32, 2, 1, 4, False),
    'grouped2-identity': (8, 8, 1, 1, 2, False),
    'grouped4-identity': (16, 16, 1, 1, 4, False),
    'dilation2': (8, 8, 1, 2, 1, False),
    'dilation4-grouped': (16, 16, 1, 4, 2, False),
    'dilation2-widen': (8, 12, 1, 2, 1, False),
    'se': (32, 32, 1, 1, 1, True),
}


@pytest.mark.parametrize('case', BLOCK_CASES)
def test_block_fusion(case, randomize_bn):
    cin, cout, stride, dilation, groups, use_se = BLOCK_CASES[case]
    torch.manual_seed(3)
    block = repseg.RepVGGBlock(cin, cout, stride, dilation, groups, use_se)
    randomize_bn(block, seed=4)
    block = block.to(DTYPE).eval()
    assert (block.identity is not None) == (cin == cout and stride == 1)
    x = torch.randn(2, cin, 13, 18, dtype=DTYPE)
    with torch.no_grad():
        train_out = block(x)
        expected = block_oracle(block, x, stride, dilation, groups)
        block.reparameterize()
        fused_out = block(x)
    assert block.is_fused
    assert block.fused.dilation == block.fused.padding == (dilation, dilation)
    assert block.fused.groups == groups and block.fused.stride == (stride, stride)
    assert train_out.shape == expected.shape == fused_out.shape
    assert relative_error(train_out, expected) < 1e-12
    assert relative_error(fused_out, expected) < 1e-12


@pytest.mark.parametrize('eps', [1e-3, 0.1])
@pytest.mark.parametrize('case', ['identity', 'stride2-grouped', 'dilation2'])
def test_block_fusion_uses_the_batch_norm_eps(case, eps, randomize_bn):
    """BNs built with another eps than PyTorch's 1e-5 (mmcv's norm_cfg can set it): the
    fused conv must fold the eps of each branch's BN, as the oracle reads it."""
    cin, cout, stride, dilation, groups, use_se = BLOCK_CASES[case]
    torch.manual_seed(3)
    block = repseg.RepVGGBlock(cin, cout, stride, dilation, groups, use_se,
                               norm_layer=lambda channels: torch.nn.BatchNorm2d(channels, eps))
    block = randomize_bn(block, seed=4).to(DTYPE).eval()
    for bn in (block.conv3x3.bn, block.conv1x1.bn, block.identity):
        if bn is not None:  # small variances, so that eps weighs in the scale
            bn.running_var.uniform_(0.01, 0.05)
    x = torch.randn(2, cin, 13, 18, dtype=DTYPE)
    with torch.no_grad():
        expected = block_oracle(block, x, stride, dilation, groups)
        block.reparameterize()
        assert relative_error(block(x), expected) < 1e-12


def test_segmentation_backbone_with_norm_cfg_eps_fuses_exactly(randomize_bn):
    """The mmseg backbone, its BNs built by mmcv from ``norm_cfg`` with eps 1e-3, against
    its own train-time forward (which runs mmcv's BNs with that eps)."""
    from mmseg.registry import MODELS

    torch.manual_seed(9)
    backbone = MODELS.build(dict(type='RepVGG', arch='A0', dilation='fast', out_indices=(3,),
                                 norm_cfg=dict(type='BN', eps=1e-3, requires_grad=True)))
    backbone = randomize_bn(backbone, seed=10).to(DTYPE).eval()
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(norm.eps == 1e-3 for norm in norms)
    for norm in norms:
        norm.running_var.uniform_(0.01, 0.05)
    x = torch.randn(1, 3, 32, 48, dtype=DTYPE)
    with torch.no_grad():
        expected = backbone(x)[-1]
        actual = repseg.reparameterize(backbone)(x)[-1]
    assert relative_error(actual, expected) < 1e-9


def test_deploy_backbone_fuses_on_load_with_its_norm_cfg_eps(randomize_bn):
    """Train-time weights loaded into the fused (deploy) mmseg backbone of a config whose
    ``norm_cfg`` has eps 1e-3 fold with that eps: the train-time forward is the oracle."""
    from mmseg.registry import MODELS

    def build(deploy):
        return MODELS.build(dict(type='RepVGG', arch='A0', out_indices=(3,), deploy=deploy,
                                 norm_cfg=dict(type='BN', eps=1e-3)))

    torch.manual_seed(11)
    train = randomize_bn(build(False), seed=12).to(DTYPE).eval()
    for norm in (m for m in train.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_var.uniform_(0.01, 0.05)
    deploy = build(True).to(DTYPE).eval()
    repseg.load_checkpoint(deploy, train.state_dict())
    x = torch.randn(1, 3, 32, 48, dtype=DTYPE)
    with torch.no_grad():
        assert relative_error(deploy(x)[-1], train(x)[-1]) < 1e-9


# ---------------------------------------------------------------- whole models

@pytest.mark.parametrize('arch', list(repseg.ARCH_SETTINGS))
def test_reparameterized_model_matches_train_time(arch, randomize_bn):
    torch.manual_seed(0)
    model = randomize_bn(repseg.create_model(arch), seed=1).to(DTYPE).eval()
    size = (48, 80) if arch == 'D2se' else (32, 32)
    x = torch.randn(1, 3, *size, dtype=DTYPE)
    with torch.no_grad():
        expected = model(x)
        fused = repseg.reparameterize(model, inplace=True)
        actual = fused(x)
    assert fused is model
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert expected.std() > 1e-2  # logits of a healthy, non-degenerate network
    assert relative_error(actual, expected) < 1e-9


@pytest.fixture(scope='module')
def small_model(randomize_bn):
    torch.manual_seed(5)
    return randomize_bn(repseg.create_model('B1g4', num_classes=10), seed=6).eval()


def test_inplace_false_leaves_original_unfused(small_model):
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    fused = repseg.reparameterize(small_model)
    assert fused is not small_model
    assert all(not block.is_fused for block in small_model.modules()
               if isinstance(block, repseg.RepVGGBlock))
    after = small_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(block.is_fused for block in fused.modules() if isinstance(block, repseg.RepVGGBlock))


def test_reparameterize_is_idempotent(small_model):
    x = torch.randn(2, 3, 32, 32)
    once = repseg.reparameterize(small_model)
    state = {k: v.clone() for k, v in once.state_dict().items()}
    twice = repseg.reparameterize(once, inplace=True)
    assert twice is once
    assert state.keys() == twice.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in twice.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(twice(x), small_model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('training', [True, False])
def test_reparameterize_keeps_mode(small_model, training):
    model = repseg.reparameterize(small_model.train(training))
    small_model.eval()
    assert all(module.training == training for module in model.modules())


def test_deploy_model_loads_fused_state(small_model):
    fused = repseg.reparameterize(small_model)
    deploy = repseg.create_model('B1g4', num_classes=10, deploy=True).eval()
    deploy.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), small_model(x), rtol=1e-4, atol=1e-5)


def test_dilated_segmentation_body_fuses_exactly(randomize_bn):
    """A whole body with the 'full' dilation plan (stride 1, dilation 2 and 4)."""
    from repseg.models.dilation import plan_strides_and_dilations
    from repseg.models.repvgg import build_stem_and_stages
    spec = repseg.ARCH_SETTINGS['B1g2']
    strides, dilations = plan_strides_and_dilations(spec.num_blocks, 'full')
    torch.manual_seed(7)
    stem, stages = build_stem_and_stages(spec, strides=strides, dilations=dilations)
    body = randomize_bn(torch.nn.Sequential(stem, *stages), seed=8).to(DTYPE).eval()
    x = torch.randn(1, 3, 32, 48, dtype=DTYPE)
    with torch.no_grad():
        expected = body(x)
        actual = repseg.reparameterize(body)(x)
    assert expected.shape == (1, 2048, 4, 6)  # output stride 8
    assert relative_error(actual, expected) < 1e-9


# ---------------------------------------------------------------- tools/test.py

@pytest.fixture(scope='module')
def test_tool_inputs(tmp_path_factory, city_copy):
    """A narrow demo config on a toy city of 1 val frame, a train-time checkpoint and
    its fused pair written by tools/deploy.py."""
    from repseg.mmseg.deploy import deploy_segmentor
    from tiny_models import narrow_demo_checkpoint

    folder = tmp_path_factory.mktemp('no_fuse')
    toy = city_copy(folder, num_train=1, num_val=1)
    config, checkpoint = narrow_demo_checkpoint(folder)
    fused = deploy_segmentor(config, checkpoint, folder / 'fused', verify_shape=None)
    options = {'test_dataloader.dataset.data_root': str(toy),
               'test_dataloader.num_workers': 0, 'test_dataloader.persistent_workers': False}
    return dict(train=(config, checkpoint), fused=fused[::-1], options=options)


@pytest.mark.parametrize('pair, expected', [
    ('train', False),
    ('fused', True),  # a *_deploy.py config builds fused blocks: nothing to unfuse
], ids=['train-no-fuse', 'deploy-no-fuse'])
def test_metrics_json_records_whether_the_tested_model_was_fused(
        test_tool_inputs, tmp_path, monkeypatch, pair, expected):
    """``--no-fuse``: ``"fused"`` says what the tested model was, seen by the
    segmentor's blocks at the moment the Runner tests it (their branches present or
    not), not what was asked. (The fused default is tested pixel for pixel elsewhere.)"""
    import json

    from mmengine.runner import TestLoop

    seen = []

    def run(loop):
        blocks = [m for m in loop.runner.model.modules() if isinstance(m, repseg.RepVGGBlock)]
        seen.append(all(hasattr(b, 'fused') and not hasattr(b, 'conv3x3') for b in blocks))
        return real_run(loop)

    real_run = TestLoop.run
    monkeypatch.setattr(TestLoop, 'run', run)
    from repseg.mmseg.runner import run_test

    config, checkpoint = test_tool_inputs[pair]
    run_test(config, checkpoint, work_dir=str(tmp_path), fuse=False,
             cfg_options=test_tool_inputs['options'])
    assert seen == [expected]
    assert json.loads((tmp_path / 'metrics.json').read_text())['fused'] is expected
