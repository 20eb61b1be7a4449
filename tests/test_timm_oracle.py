"""timm's independent RepVGG as an oracle: its weights, loaded through repseg, must give
its logits (train-time, fused by repseg, fused by timm), in every checkpoint layout."""
import re

import pytest
import torch

import repseg
from repseg.checkpoint import CheckpointError, export_state_dict
from timm import create_model as timm_create_model  # noqa: I100 (after repseg)
from timm.utils.model import reparameterize_model as timm_reparameterize

pytestmark = pytest.mark.usefixtures('single_thread')

TIMM_ARCHS = {'A0': 'repvgg_a0', 'A1': 'repvgg_a1', 'A2': 'repvgg_a2', 'B0': 'repvgg_b0',
              'B1': 'repvgg_b1', 'B1g4': 'repvgg_b1g4', 'B2': 'repvgg_b2',
              'B2g4': 'repvgg_b2g4', 'B3': 'repvgg_b3', 'B3g4': 'repvgg_b3g4',
              'D2se': 'repvgg_d2se'}
# The layout tests are about key names, not depth: a plain, a grouped and the SE arch.
LAYOUT_ARCHS = ['A0', 'B1g4', 'D2se']
INPUT_SIZE = (32, 48)  # non-square: the last feature map is 1x2
ATOL = 1e-5

# REFERENCES section 3, written independently of repseg's layout tables: timm key -> key.
_STAGE = re.compile(r'^stages\.(\d+)\.')
TIMM_TO_OFFICIAL = [(r'^stem\.', 'stage0.'),
                    (_STAGE, lambda m: f'stage{int(m[1]) + 1}.'),
                    (r'\.conv_kxk\.', '.rbr_dense.'), (r'\.conv_1x1\.', '.rbr_1x1.'),
                    (r'\.identity\.', '.rbr_identity.'), (r'\.reparam_conv\.', '.rbr_reparam.'),
                    (r'\.attn\.fc1\.', '.se.down.'), (r'\.attn\.fc2\.', '.se.up.'),
                    (r'^head\.fc\.', 'linear.')]
TIMM_TO_MMPRETRAIN = [(r'^stem\.', 'backbone.stem.'),
                      (_STAGE, lambda m: f'backbone.stage_{int(m[1]) + 1}.'),
                      (r'\.conv_kxk\.bn\.', '.branch_3x3.norm.'),
                      (r'\.conv_1x1\.bn\.', '.branch_1x1.norm.'),
                      (r'\.conv_kxk\.', '.branch_3x3.'), (r'\.conv_1x1\.', '.branch_1x1.'),
                      (r'\.identity\.', '.branch_norm.'),
                      (r'\.reparam_conv\.', '.branch_reparam.'),
                      (r'\.attn\.fc1\.', '.se_layer.conv1.conv.'),
                      (r'\.attn\.fc2\.', '.se_layer.conv2.conv.')]
RENAMES = {'official': TIMM_TO_OFFICIAL, 'mmpretrain': TIMM_TO_MMPRETRAIN}


def rename(state, table):
    out = {}
    for key, value in state.items():
        for pattern, replacement in table:
            key = re.sub(pattern, replacement, key, count=1)
        out[key] = value
    return out


def build_timm(name, randomize_weights, seed):
    """timm's model allocated without its own init, then re-drawn (see conftest)."""
    with torch.device('meta'):
        model = timm_create_model(name)
    return randomize_weights(model.to_empty(device='cpu'), seed).eval()


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def assert_logits(actual, expected):
    assert not torch.isnan(actual).any()
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


@pytest.fixture(scope='module', params=list(TIMM_ARCHS))
def oracle(request, randomize_weights):
    """timm's train-time and fused state dicts, an input and timm's logits for one arch."""
    arch = request.param
    torch.manual_seed(0)
    timm_model = build_timm(TIMM_ARCHS[arch], randomize_weights, seed=1)
    x = torch.randn(1, 3, *INPUT_SIZE)
    expected = logits(timm_model, x)
    train_state = {k: v.clone() for k, v in timm_model.state_dict().items()}
    timm_reparameterize(timm_model, inplace=True)
    fused_state = timm_model.state_dict()
    fused_expected = logits(timm_model, x)
    del timm_model
    assert expected.std() > 1e-2, 'degenerate oracle: logits nearly constant'
    assert all('reparam_conv' in k for k in fused_state if 'attn' not in k and 'head' not in k)
    return dict(arch=arch, x=x, expected=expected, train_state=train_state,
                fused_state=fused_state, fused_expected=fused_expected)


def test_timm_fused_matches_timm_train(oracle):
    """The oracle itself is consistent (guards against a broken timm install)."""
    assert_logits(oracle['fused_expected'], oracle['expected'])


def test_train_weights_give_timm_logits(oracle, nan_model):
    model = nan_model(oracle['arch'])
    report = repseg.load_checkpoint(model, oracle['train_state'])
    assert report.layout == 'timm' and not report.fused_checkpoint
    assert_logits(logits(model, oracle['x']), oracle['expected'])
    repseg.reparameterize(model, inplace=True)
    assert_logits(logits(model, oracle['x']), oracle['expected'])


def test_timm_fused_weights_load_into_deploy_model(oracle, nan_model):
    model = nan_model(oracle['arch'], deploy=True)
    report = repseg.load_checkpoint(model, oracle['fused_state'])
    assert report.fused_checkpoint and not report.fused_on_load
    assert_logits(logits(model, oracle['x']), oracle['fused_expected'])


@pytest.mark.parametrize('oracle', LAYOUT_ARCHS, indirect=True)
def test_timm_train_weights_fuse_on_load_into_deploy_model(oracle, nan_model):
    model = nan_model(oracle['arch'], deploy=True)
    report = repseg.load_checkpoint(model, oracle['train_state'])
    assert not report.fused_checkpoint and report.fused_on_load
    assert_logits(logits(model, oracle['x']), oracle['expected'])


def test_timm_fused_weights_refused_by_train_model(oracle):
    with torch.device('meta'):
        model = repseg.create_model(oracle['arch'])
    with pytest.raises(CheckpointError, match='deploy=True'):
        repseg.load_checkpoint(model, oracle['fused_state'])


@pytest.mark.parametrize('oracle', LAYOUT_ARCHS, indirect=True)
@pytest.mark.parametrize('layout', sorted(RENAMES))
@pytest.mark.parametrize('fused', [False, True], ids=['train', 'fused'])
def test_independently_renamed_weights(oracle, nan_model, layout, fused):
    state = rename(oracle['fused_state' if fused else 'train_state'], RENAMES[layout])
    model = nan_model(oracle['arch'], deploy=fused)
    report = repseg.load_checkpoint(model, state)
    assert report.layout == layout and report.fused_checkpoint == fused
    assert_logits(logits(model, oracle['x']), oracle['fused_expected' if fused else 'expected'])


@pytest.mark.parametrize('oracle', LAYOUT_ARCHS, indirect=True)
@pytest.mark.parametrize('layout', ['official', 'timm', 'mmpretrain', 'repseg'])
def test_export_state_dict_layouts(oracle, nan_model, layout):
    """Exporting repseg's state gives the independently renamed keys and loads back."""
    model = nan_model(oracle['arch'])
    repseg.load_checkpoint(model, oracle['train_state'])
    exported = export_state_dict(model.state_dict(), layout)
    if layout in RENAMES:
        assert exported.keys() == rename(oracle['train_state'], RENAMES[layout]).keys()
    elif layout == 'timm':
        assert exported.keys() == oracle['train_state'].keys()
    model = nan_model(oracle['arch'])
    report = repseg.load_checkpoint(model, exported)
    assert report.layout == layout
    assert_logits(logits(model, oracle['x']), oracle['expected'])


@pytest.fixture(scope='module')
def a0(randomize_weights):
    torch.manual_seed(2)
    timm_model = build_timm('repvgg_a0', randomize_weights, seed=3)
    x = torch.randn(2, 3, *INPUT_SIZE)
    return timm_model.state_dict(), x, logits(timm_model, x)


@pytest.mark.parametrize('wrap', ['state_dict', 'model', 'module', 'state_dict+module'])
@pytest.mark.parametrize('via_file', [False, True], ids=['dict', 'file'])
def test_containers_and_ddp_prefix(a0, nan_model, wrap, via_file, tmp_path):
    state, x, expected = a0
    if 'module' in wrap:
        state = {f'module.{k}': v for k, v in state.items()}
    if wrap.startswith('state_dict'):
        ckpt = {'state_dict': state, 'meta': {'epoch': 3}}
    elif wrap == 'model':
        ckpt = {'model': state, 'optimizer': {}}
    else:
        ckpt = state
    if via_file:
        torch.save(ckpt, tmp_path / 'ckpt.pth')
        ckpt = tmp_path / 'ckpt.pth'
    model = nan_model('A0')
    report = repseg.load_checkpoint(model, ckpt)
    assert report.layout == 'timm'
    assert_logits(logits(model, x), expected)
