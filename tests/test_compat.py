"""repseg.compat: mmcv.ops stand-ins on mmcv-lite, and mmengine checkpoints under weights_only."""
import importlib.util
import pickle
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import repseg  # noqa: F401  (applies the shims)
from repseg import compat

LITE = importlib.util.find_spec('mmcv._ext') is None


@pytest.mark.skipif(not LITE, reason='full mmcv installed: the stand-in is not used')
def test_mmseg_modules_that_import_mmcv_ops_now_import():
    import mmseg.models.losses.focal_loss  # noqa: F401
    import mmseg.models.utils.point_sample  # noqa: F401
    import mmseg.utils.mask_classification  # noqa: F401
    import mmseg.models.decode_heads.san_head  # noqa: F401


@pytest.mark.skipif(not LITE, reason='full mmcv installed: the stand-in is not used')
def test_point_sample_is_mmcvs_pure_torch_version():
    from mmcv.ops import point_sample
    features = torch.randn(2, 3, 5, 7)
    points = torch.rand(2, 11, 2)
    expected = F.grid_sample(features, (2 * points - 1).unsqueeze(2), align_corners=False)
    torch.testing.assert_close(point_sample(features, points), expected.squeeze(3))


@pytest.mark.skipif(not LITE, reason='full mmcv installed: the stand-in is not used')
def test_compiled_op_fails_only_when_called_and_says_why():
    from mmcv.ops import sigmoid_focal_loss  # importing is fine
    with pytest.raises(RuntimeError, match=r'sigmoid_focal_loss needs mmcv.s compiled ops.*mmcv-lite'):
        sigmoid_focal_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_stand_in_stays_out_when_compiled_ops_exist(monkeypatch):
    monkeypatch.delitem(sys.modules, 'mmcv.ops', raising=False)
    monkeypatch.setattr(compat, '_has_compiled_mmcv_ops', lambda: True)
    assert compat.install_mmcv_ops_stand_in() is False
    assert 'mmcv.ops' not in sys.modules


class _DictDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(inputs=torch.full((2,), float(index)))


def _tiny_runner(work_dir):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Linear(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, inputs, mode='tensor'):
            out = self.fc(torch.stack(inputs) if isinstance(inputs, list) else inputs)
            return dict(loss=out.pow(2).mean()) if mode == 'loss' else out

    return Runner(
        model=Linear(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=_DictDataset(), batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)))


def test_mmengine_checkpoint_loads_with_weights_only(tmp_path):
    _tiny_runner(tmp_path).train()
    checkpoint = torch.load(tmp_path / 'iter_2.pth', map_location='cpu', weights_only=True)
    assert 'message_hub' in checkpoint and 'optimizer' in checkpoint


class NotAllowed:
    pass


def test_weights_only_still_refuses_other_globals(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'payload': NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_distutils_stand_in_only_where_nothing_provides_it(monkeypatch):
    assert compat.provide_distutils() is False  # Python 3.11 / setuptools provide it
    # Python >= 3.12 without setuptools: neither distutils nor setuptools imports.
    for name in ('distutils', 'distutils.errors', 'setuptools'):
        monkeypatch.setitem(sys.modules, name, None)
    assert compat.provide_distutils() is True
    from distutils import errors
    assert issubclass(errors.DistutilsPlatformError, Exception)
    from mmengine.utils.dl_utils import collect_env  # what every Runner runs at start
    assert collect_env()['PyTorch'] == torch.__version__


def test_norm_layer_summary_names_syncbn():
    from repseg.models.summary import norm_layer_summary
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), nn.BatchNorm2d(4),
                          nn.SyncBatchNorm(4))
    assert norm_layer_summary(model) == '1 BatchNorm2d, 2 SyncBatchNorm'
    assert norm_layer_summary(nn.Linear(2, 2)) == 'none'
