"""tools/deploy.py: train-time checkpoint in, fused checkpoint and config out."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import repseg  # noqa: I001  (first: mmcv.ops stand-ins, backbone registration)
import pytest
import torch
from mmengine.config import Config

from repseg.checkpoint import CheckpointError
from repseg.mmseg.builder import build_segmentor
from repseg.mmseg.deploy import DeployVerificationError, deploy_segmentor

REPO = Path(__file__).resolve().parents[1]
# RepVGG-A0 (stage widths 48, 96, 192, 1280) under the B1g2 config, with slim heads.
TINY_CONFIG = f"""_base_ = '{REPO / 'configs' / 'pspnet_repvgg_b1g2.py'}'
model = dict(
    backbone=dict(arch='A0', init_cfg=None),
    decode_head=dict(in_channels=1280, channels=32),
    auxiliary_head=dict(in_channels=192, channels=16))
"""


def _deploy(*args):
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'deploy.py'), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope='module')
def deployed(tmp_path_factory, randomize_bn):
    """A trained-looking tiny segmentor, its checkpoint, and what tools/deploy.py made."""
    work = tmp_path_factory.mktemp('deploy')
    config = work / 'pspnet_tiny.py'
    config.write_text(TINY_CONFIG)
    model = randomize_bn(build_segmentor(config), seed=4)
    checkpoint = work / 'iter_100.pth'
    torch.save({'meta': {'iter': 100}, 'state_dict': model.state_dict()}, checkpoint)
    result = _deploy(config, checkpoint, work / 'out')
    return model, config, checkpoint, work / 'out', result


def test_deploy_round_trip_reproduces_the_train_time_model(deployed):
    model, config, checkpoint, out, result = deployed
    assert result.returncode == 0, result.stderr
    fused_cfg, fused_ckpt = out / 'pspnet_tiny_deploy.py', out / 'pspnet_tiny_deploy.pth'
    assert str(fused_cfg) in result.stdout and str(fused_ckpt) in result.stdout
    assert 'max abs diff' in result.stdout + result.stderr
    assert {p.name for p in out.iterdir()} == {fused_cfg.name, fused_ckpt.name}

    fused = build_segmentor(fused_cfg, fused_ckpt)
    assert not any(hasattr(m, 'conv1x1') for m in fused.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = model._forward(x), fused._forward(x)
    assert (actual - expected).abs().max() < 1e-4 * expected.abs().max()


def test_deploy_writes_provenance_and_keeps_the_config(deployed):
    _, config, checkpoint, out, _ = deployed
    saved = torch.load(out / 'pspnet_tiny_deploy.pth', map_location='cpu', weights_only=True)
    assert saved['meta']['repseg_fused'] is True
    assert saved['meta']['source_config'] == str(config)
    assert saved['meta']['source_checkpoint'] == str(checkpoint)
    assert 'road' in saved['meta']['dataset_meta']['classes']
    cfg = Config.fromfile(out / 'pspnet_tiny_deploy.py')
    assert cfg.model.backbone.deploy is True and cfg.model.backbone.init_cfg is None
    assert 'pretrained' not in cfg.model
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'  # as in the source config
    assert cfg.test_dataloader == Config.fromfile(config).test_dataloader


def test_fused_checkpoint_with_the_training_config_points_to_the_deploy_config(deployed):
    _, config, _, out, _ = deployed
    with pytest.raises(CheckpointError, match='_deploy.py'):
        build_segmentor(config, out / 'pspnet_tiny_deploy.pth')


def test_deploy_cli_user_error_exits_2_without_traceback(deployed, tmp_path, monkeypatch,
                                                        capsys):
    _, config, _, _, _ = deployed
    spec = importlib.util.spec_from_file_location('deploy_cli', REPO / 'tools' / 'deploy.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    monkeypatch.setattr(sys, 'argv', ['deploy.py', str(config), str(tmp_path / 'missing.pth'),
                                      str(tmp_path / 'out')])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert 'missing.pth' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_deploy_refuses_configs_without_a_train_time_repvgg(tmp_path):
    checkpoint = tmp_path / 'any.pth'
    checkpoint.write_bytes(b'')
    with pytest.raises(ValueError, match='ResNetV1c'):
        deploy_segmentor(REPO / 'configs' / 'pspnet_r50_d8.py', checkpoint, tmp_path / 'out')


def test_failed_verification_is_loud_and_leaves_no_files(deployed, tmp_path, monkeypatch):
    _, config, checkpoint, _, _ = deployed
    monkeypatch.setattr('repseg.mmseg.deploy.compare_outputs', lambda *args: (1.0, 0.5))
    with pytest.raises(DeployVerificationError, match='relative 0.5'):
        deploy_segmentor(config, checkpoint, tmp_path / 'out')
    assert list((tmp_path / 'out').iterdir()) == []
