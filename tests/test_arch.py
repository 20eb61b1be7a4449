"""The architecture table against the paper (REFERENCES section 1).

Models are built on the meta device: shapes and parameter counts without memory or init.
"""
import pytest
import torch

import repseg

# Deploy parameter counts (FC head included) from the public metafiles.
DEPLOY_PARAMS = {
    'A0': 8_309_384, 'A1': 12_789_864, 'A2': 25_499_944, 'B0': 14_339_048,
    'B1': 51_829_480, 'B1g2': 41_360_104, 'B1g4': 36_125_416,
    'B2': 80_315_112, 'B2g2': 63_956_712, 'B2g4': 55_777_512,
    'B3': 110_960_872, 'B3g2': 87_404_776, 'B3g4': 75_626_728, 'D2se': 120_387_572,
}

# Paper Tables 2-3: blocks of stages 1-4, width multipliers a and b, groups.
A_BLOCKS, B_BLOCKS = (2, 4, 14, 1), (4, 6, 16, 1)
PAPER = {
    'A0': (A_BLOCKS, 0.75, 2.5, 1), 'A1': (A_BLOCKS, 1, 2.5, 1), 'A2': (A_BLOCKS, 1.5, 2.75, 1),
    'B0': (B_BLOCKS, 1, 2.5, 1),
    'B1': (B_BLOCKS, 2, 4, 1), 'B1g2': (B_BLOCKS, 2, 4, 2), 'B1g4': (B_BLOCKS, 2, 4, 4),
    'B2': (B_BLOCKS, 2.5, 5, 1), 'B2g2': (B_BLOCKS, 2.5, 5, 2), 'B2g4': (B_BLOCKS, 2.5, 5, 4),
    'B3': (B_BLOCKS, 3, 5, 1), 'B3g2': (B_BLOCKS, 3, 5, 2), 'B3g4': (B_BLOCKS, 3, 5, 4),
    'D2se': ((8, 14, 24, 1), 2.5, 5, 1),
}


def meta_model(arch, **kwargs):
    with torch.device('meta'):
        return repseg.create_model(arch, **kwargs)


def blocks_in_order(model):
    """The stem (layer 0), then every block of stages 1-4 (layers 1, 2, ...)."""
    return [model.stem] + [block for stage in model.stages for block in stage]


def test_table_covers_all_archs():
    assert set(repseg.ARCH_SETTINGS) == set(DEPLOY_PARAMS) == set(PAPER)


@pytest.mark.parametrize('arch', DEPLOY_PARAMS)
def test_deploy_parameter_count(arch):
    model = meta_model(arch, deploy=True)
    assert sum(p.numel() for p in model.parameters()) == DEPLOY_PARAMS[arch]


@pytest.mark.parametrize('arch', PAPER)
def test_train_time_structure(arch):
    num_blocks, a, b, _ = PAPER[arch]
    model = meta_model(arch)
    widths = [int(64 * a), int(128 * a), int(256 * a), int(512 * b)]
    assert [len(stage) for stage in model.stages] == list(num_blocks)
    assert model.stem.conv3x3.conv.out_channels == min(64, int(64 * a))
    assert model.stem.conv3x3.conv.stride == (2, 2) and model.stem.identity is None
    for stage, width in zip(model.stages, widths):
        for j, block in enumerate(stage):
            stride = 2 if j == 0 else 1
            assert block.conv3x3.conv.out_channels == width
            assert block.conv3x3.conv.stride == block.conv1x1.conv.stride == (stride, stride)
            assert block.conv3x3.conv.kernel_size == (3, 3)
            assert block.conv1x1.conv.kernel_size == (1, 1)
            assert block.conv1x1.conv.padding == (0, 0)
            # every stage starts with a stride-2 block, so only later blocks keep shape
            assert (block.identity is not None) == (j > 0)
    assert model.head.fc.in_features == widths[-1] and model.head.fc.out_features == 1000
    has_se = [not isinstance(block.se, torch.nn.Identity) for block in blocks_in_order(model)]
    assert all(has_se) if arch == 'D2se' else not any(has_se)


@pytest.mark.parametrize('arch', PAPER)
def test_deploy_model_is_plain(arch):
    model = meta_model(arch, deploy=True)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for block in blocks_in_order(model):
        assert block.fused.kernel_size == (3, 3) and block.fused.bias is not None


@pytest.mark.parametrize('arch', [a for a in PAPER if PAPER[a][3] > 1])
@pytest.mark.parametrize('deploy', [False, True])
def test_grouped_layers_are_the_even_ones(arch, deploy):
    groups = PAPER[arch][3]
    model = meta_model(arch, deploy=deploy)
    for layer, block in enumerate(blocks_in_order(model)):
        expected = groups if layer in range(2, 27, 2) else 1
        convs = [block.fused] if deploy else [block.conv3x3.conv, block.conv1x1.conv]
        assert [conv.groups for conv in convs] == [expected] * len(convs), f'layer {layer}'


def test_ungrouped_archs_have_no_groups():
    for arch in PAPER:
        if PAPER[arch][3] == 1:
            model = meta_model(arch)
            assert all(m.groups == 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize('name', ['RepVGG-B2', 'repvgg_b2', 'b2', 'B2'])
def test_arch_name_aliases(name):
    model = meta_model(name)
    assert model.arch == 'B2'
    assert sum(p.numel() for p in meta_model(name, deploy=True).parameters()) == DEPLOY_PARAMS['B2']


@pytest.mark.parametrize('name', ['B5', 'RepVGG-C1', 'resnet50', ''])
def test_unknown_arch_lists_valid_names(name):
    with pytest.raises(ValueError) as info:
        repseg.create_model(name)
    message = str(info.value)
    assert repr(name) in message
    for valid in PAPER:
        assert valid in message


def test_headless_model_returns_features():
    model = repseg.create_model('A0', num_classes=0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 1280, 2, 3)
