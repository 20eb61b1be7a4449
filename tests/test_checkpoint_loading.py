"""Checkpoint loading errors: what a user sees when a checkpoint does not fit."""
import pytest
import torch

import repseg
from repseg.checkpoint import CheckpointError, CheckpointMismatchError, export_state_dict

pytestmark = pytest.mark.usefixtures('single_thread')

ALL_LAYOUTS = ('official', 'timm', 'mmpretrain', 'repseg')


@pytest.fixture(scope='module')
def a0(randomize_bn):
    torch.manual_seed(21)
    return randomize_bn(repseg.create_model('A0'), seed=22).eval()


@pytest.fixture(scope='module')
def a0_official(a0):
    return export_state_dict({k: v.clone() for k, v in a0.state_dict().items()}, 'official')


def test_missing_file_names_path(tmp_path):
    path = tmp_path / 'nowhere' / 'RepVGG-A0-train.pth'
    with pytest.raises(FileNotFoundError, match='RepVGG-A0-train.pth'):
        repseg.load_checkpoint(repseg.create_model('A0'), path)


@pytest.mark.parametrize('keep', [0.5, 0.999])
def test_truncated_file(a0_official, tmp_path, keep):
    path = tmp_path / 'RepVGG-A0-train.pth'
    torch.save(a0_official, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        repseg.load_checkpoint(repseg.create_model('A0'), path)
    assert 'truncated' in str(info.value) and 'RepVGG-A0-train.pth' in str(info.value)


def test_pickled_objects_are_refused(a0_official, tmp_path):
    """Checkpoints are read with weights_only=True: unpickling must not run code."""
    marker = tmp_path / 'code-ran'

    class Payload:
        def __reduce__(self):
            return open, (str(marker), 'w')

    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': a0_official, 'meta': Payload()}, path)
    with pytest.raises(CheckpointError, match='evil.pth'):
        repseg.load_checkpoint(repseg.create_model('A0'), path)
    assert not marker.exists()


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'numbers.pth'
    torch.save({'state_dict': {'epoch': 3}}, path)
    with pytest.raises(CheckpointError, match='no state dict of tensors'):
        repseg.load_checkpoint(repseg.create_model('A0'), path)


@pytest.mark.parametrize('layout', ALL_LAYOUTS)
def test_fused_weights_into_train_model_suggest_deploy(a0, layout):
    fused = export_state_dict(repseg.reparameterize(a0).state_dict(), layout)
    with pytest.raises(CheckpointError) as info:
        repseg.load_checkpoint(repseg.create_model('A0'), fused)
    assert 'deploy=True' in str(info.value) and layout in str(info.value)


def test_unknown_layout_lists_known_ones():
    resnet = {'conv1.weight': torch.zeros(64, 3, 7, 7), 'bn1.weight': torch.zeros(64),
              'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1),
              'fc.weight': torch.zeros(1000, 2048)}
    with pytest.raises(CheckpointError) as info:
        repseg.load_checkpoint(repseg.create_model('A0'), resnet)
    message = str(info.value)
    assert 'unrecognised' in message and 'layer1.0.conv1.weight' in message
    assert all(layout in message for layout in ALL_LAYOUTS)


def test_other_arch_is_named(a0_official):
    with pytest.raises(CheckpointMismatchError) as info:
        repseg.load_checkpoint(repseg.create_model('B0'), a0_official)
    message = str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, CheckpointError)
    assert 'missing in checkpoint' in message and 'stages.0.2.conv3x3.conv.weight' in message
    assert 'wrong shape' in message and 'stem.conv3x3.conv.weight' in message
    assert '(48, 3, 3, 3)' in message and '(64, 3, 3, 3)' in message
    assert 'RepVGG-A0' in message


def test_classifier_dropped_for_headless_model(a0, a0_official):
    backbone = repseg.create_model('A0', num_classes=0).eval()
    report = repseg.load_checkpoint(backbone, a0_official)
    assert sorted(report.dropped) == ['head.fc.bias', 'head.fc.weight']
    assert report.missing == report.unexpected == report.mismatched == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), a0.forward_features(x), rtol=0, atol=0)


def test_non_strict_loads_what_matches(a0, a0_official):
    state = dict(a0_official)
    state['linear.weight'] = torch.zeros(10, 1280)  # a 10-class head
    state['linear.bias'] = torch.zeros(10)
    removed = [k for k in state if k.startswith('stage3.13.')]
    for key in removed:
        del state[key]
    state['stage3.13.rbr_dense.conv.extra'] = torch.zeros(1)
    model = repseg.create_model('A0')
    head_before = model.head.fc.weight.detach().clone()
    with pytest.raises(CheckpointMismatchError):
        repseg.load_checkpoint(model, state)
    report = repseg.load_checkpoint(model, state, strict=False)
    assert 'stages.2.13.conv3x3.conv.weight' in report.missing
    assert 'stages.2.13.identity.running_var' in report.missing
    assert 'stages.2.13.conv3x3.conv.extra' in report.unexpected
    assert sorted(k.split(' ')[0] for k in report.mismatched) == ['head.fc.bias', 'head.fc.weight']
    assert torch.equal(model.head.fc.weight, head_before)
    expected = a0.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(('stages.2.13.', 'head.')) or key.endswith('num_batches_tracked'):
            continue
        assert torch.equal(value, expected[key]), key
