"""tools/convert.py and the library function behind it, checked against timm's logits."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import repseg
from repseg.checkpoint import CheckpointError
from repseg.checkpoint.convert import convert_checkpoint
from timm import create_model as timm_create_model  # noqa: I100 (after repseg)
from timm.utils.model import reparameterize_model as timm_reparameterize

pytestmark = pytest.mark.usefixtures('single_thread')

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'convert.py'

# The first key of each layout's stem 3x3 (train-time) and fused conv, REFERENCES section 3.
STEM_KEYS = {'official': ('stage0.rbr_dense.conv.weight', 'stage0.rbr_reparam.weight'),
             'timm': ('stem.conv_kxk.conv.weight', 'stem.reparam_conv.weight'),
             'mmpretrain': ('backbone.stem.branch_3x3.conv.weight',
                            'backbone.stem.branch_reparam.weight'),
             'repseg': ('stem.conv3x3.conv.weight', 'stem.fused.weight')}
HEAD_KEYS = {'official': 'linear.weight', 'timm': 'head.fc.weight',
             'mmpretrain': 'head.fc.weight', 'repseg': 'head.fc.weight'}


@pytest.fixture(scope='module')
def timm_a0(tmp_path_factory, randomize_weights):
    """A timm RepVGG-A0 checkpoint (7 classes) on disk, an input and its logits."""
    torch.manual_seed(31)
    with torch.device('meta'):
        model = timm_create_model('repvgg_a0', num_classes=7)
    model = randomize_weights(model.to_empty(device='cpu'), seed=32).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = model(x)
    folder = tmp_path_factory.mktemp('convert')
    src = folder / 'timm_a0.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1}}, src)
    fused_src = folder / 'timm_a0_fused.pth'
    torch.save(timm_reparameterize(model).state_dict(), fused_src)
    return src, fused_src, x, expected


def load_logits(path, deploy, x, num_classes=7):
    model = repseg.create_model('A0', num_classes=num_classes, deploy=deploy).eval()
    repseg.load_checkpoint(model, path)
    with torch.no_grad():
        return model(x)


def assert_layout(state, layout, fused):
    assert STEM_KEYS[layout][int(fused)] in state
    assert STEM_KEYS[layout][int(not fused)] not in state
    assert HEAD_KEYS[layout] in state


def test_cli_timm_to_official_deploy(timm_a0, tmp_path):
    src, _, x, expected = timm_a0
    dst = tmp_path / 'RepVGG-A0-deploy.pth'
    result = subprocess.run([str(TOOL), str(src), str(dst), '--arch', 'RepVGG-A0',
                             '--to', 'official', '--deploy'],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env=dict(os.environ, PATH=os.pathsep.join(
                                [str(Path(sys.executable).parent), os.environ['PATH']])))
    assert result.returncode == 0, result.stderr
    assert 'timm layout' in result.stdout and 'train-time' in result.stdout
    assert 'official layout' in result.stdout and 'fused' in result.stdout
    assert str(dst) in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]  # no .tmp left behind
    state = torch.load(dst, weights_only=True)
    assert_layout(state, 'official', fused=True)
    torch.testing.assert_close(load_logits(dst, True, x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize('deploy', [False, True], ids=['train', 'deploy'])
@pytest.mark.parametrize('layout', ['official', 'timm', 'mmpretrain', 'repseg'])
def test_library_layouts(timm_a0, tmp_path, layout, deploy):
    src, _, x, expected = timm_a0
    dst = tmp_path / 'out.pth'
    summary = convert_checkpoint(src, dst, 'A0', to=layout, deploy=deploy)
    assert summary == {'arch': 'A0', 'layout_in': 'timm', 'fused_in': False,
                       'num_classes': 7, 'segmentor_heads': 0, 'layout_out': layout,
                       'fused_out': deploy,
                       'tensors': summary['tensors'], 'dst': str(dst)}
    state = torch.load(dst, weights_only=True)
    assert summary['tensors'] == len(state)
    assert_layout(state, layout, fused=deploy)
    torch.testing.assert_close(load_logits(dst, deploy, x), expected, rtol=0, atol=1e-5)


def test_library_fused_input_stays_fused(timm_a0, tmp_path):
    _, fused_src, x, expected = timm_a0
    dst = tmp_path / 'out.pth'
    summary = convert_checkpoint(fused_src, dst, 'A0', to='mmpretrain')
    assert summary['fused_in'] and summary['fused_out']
    assert_layout(torch.load(dst, weights_only=True), 'mmpretrain', fused=True)
    torch.testing.assert_close(load_logits(dst, True, x), expected, rtol=0, atol=1e-5)


def test_library_headless_checkpoint(tmp_path):
    state = repseg.create_model('A0', num_classes=0).state_dict()
    src = tmp_path / 'backbone.pth'
    torch.save(state, src)
    summary = convert_checkpoint(src, tmp_path / 'out.pth', 'A0', to='timm')
    assert summary['num_classes'] == 0
    out = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert not any(key.startswith('head.') for key in out)


def test_failed_write_keeps_old_output(timm_a0, tmp_path, monkeypatch):
    src = timm_a0[0]
    dst = tmp_path / 'out.pth'
    dst.write_bytes(b'old checkpoint')

    def crash(obj, path):
        Path(path).write_bytes(b'half a checkpoint')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError, match='disk full'):
        convert_checkpoint(src, dst, 'A0', force=True)
    assert dst.read_bytes() == b'old checkpoint'
    assert [p.name for p in tmp_path.iterdir()] == ['out.pth']


@pytest.fixture
def run_main(capsys):
    """Run the CLI's main() in-process; returns (exit code, stdout, stderr)."""
    sys.path.insert(0, str(TOOL.parent))
    try:
        import convert as cli
    finally:
        sys.path.remove(str(TOOL.parent))

    def run(*argv):
        with pytest.raises(SystemExit) as info:
            cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return info.value.code, out, err
    return run


def test_cli_user_errors_exit_2_without_traceback(timm_a0, tmp_path, run_main):
    src = timm_a0[0]
    cases = [((tmp_path / 'missing.pth', tmp_path / 'o.pth', '--arch', 'A0'), ['missing.pth']),
             ((src, tmp_path / 'o.pth', '--arch', 'B9'), ["unknown RepVGG arch 'B9'", 'B1g4']),
             ((src, tmp_path / 'no' / 'o.pth', '--arch', 'A0'), ['output folder not found']),
             ((src, tmp_path / 'o.pth', '--arch', 'B1'), [src.name, 'looks like RepVGG-A0'])]
    for argv, messages in cases:
        code, out, err = run_main(*argv)
        assert code == 2, err
        assert err.startswith('error: ') and all(message in err for message in messages)
        assert 'Traceback' not in err
    assert not (tmp_path / 'o.pth').exists()


def test_cli_rejects_unknown_layout(run_main, tmp_path):
    code, _, err = run_main('a.pth', tmp_path / 'b.pth', '--arch', 'A0', '--to', 'caffe')
    assert code == 2 and 'invalid choice' in err


def test_library_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match='official, timm, mmpretrain'):
        convert_checkpoint(tmp_path / 'a.pth', tmp_path / 'b.pth', 'A0', to='caffe')


def test_library_refuses_truncated_file(tmp_path):
    src = tmp_path / 'cut.pth'
    torch.save(repseg.create_model('A0', num_classes=3).state_dict(), src)
    src.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='truncated'):
        convert_checkpoint(src, tmp_path / 'out.pth', 'A0')
    assert not (tmp_path / 'out.pth').exists()
