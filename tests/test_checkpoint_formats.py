"""Outputs are written in the format their name says: tools/convert.py writes a real
safetensors file for a .safetensors DST (read back here by the safetensors library itself
and by load_checkpoint); a name of another format is refused (the error matrix)."""
import pytest
import torch
from safetensors import safe_open

import repseg
from tiny_models import load_tool

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def a0_source(tmp_path_factory, randomize_weights):
    path = tmp_path_factory.mktemp('formats') / 'a0.pth'
    with torch.device('meta'):
        model = repseg.create_model('A0', num_classes=4)
    model = randomize_weights(model.to_empty(device='cpu'), seed=3).eval()
    torch.save(model.state_dict(), path)
    return path, model


@pytest.mark.parametrize('deploy', [False, True], ids=['train-time', 'fused'])
def test_convert_writes_safetensors_for_a_safetensors_name(a0_source, tmp_path, deploy):
    source, model = a0_source
    flags = ['--arch', 'A0', '--to', 'timm', *(['--deploy'] if deploy else [])]
    tool = load_tool('convert')
    tool.main([str(source), str(tmp_path / 'a0.safetensors'), *flags])
    tool.main([str(source), str(tmp_path / 'a0.pth'), *flags])
    expected = torch.load(tmp_path / 'a0.pth', weights_only=True)
    with safe_open(str(tmp_path / 'a0.safetensors'), framework='pt') as file:
        assert file.metadata() == {'format': 'pt'}
        written = {key: file.get_tensor(key) for key in file.keys()}
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[key], expected[key]) for key in expected)

    loaded = repseg.create_model('A0', num_classes=4, deploy=deploy).eval()
    report = repseg.load_checkpoint(loaded, tmp_path / 'a0.safetensors')
    assert report.layout == 'timm' and report.fused_checkpoint == deploy
    x = torch.randn(2, 3, 32, 32, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)
