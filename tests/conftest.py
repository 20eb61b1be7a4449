"""Shared test helpers. ``repseg`` is imported first: it supplies the ``mmcv.ops``
stand-ins that mmseg and mmpretrain need on mmcv-lite."""
import os
import shutil
from pathlib import Path

import repseg  # noqa: F401
import pytest
import torch
import torch.nn as nn

from repseg.models.summary import randomize_batch_norms as _randomize_batch_norms


def _randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every conv and linear with PyTorch's default init, then randomize BNs.

    timm and mmpretrain initialise with larger weights than PyTorch's default, which
    makes logits of deep random networks reach ~100 and float32 comparisons meaningless.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()
    return _randomize_batch_norms(model, seed)


def _nan_model(arch: str, **kwargs) -> nn.Module:
    """``repseg.create_model(arch, **kwargs)`` with every float tensor NaN, in eval mode."""
    with torch.device('meta'):
        model = repseg.create_model(arch, **kwargs)
    model = model.to_empty(device='cpu')
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float('nan'))
    return model.eval()


@pytest.fixture(scope='session', autouse=True)
def frame_check_cache(tmp_path_factory):
    """The pre-flight's frame-check cache in a fresh folder (inherited by the tools the
    tests start), so that tests neither write to ~/.cache nor see an earlier run's."""
    path = tmp_path_factory.mktemp('repseg_cache')
    previous = os.environ.get('REPSEG_CACHE_DIR')
    os.environ['REPSEG_CACHE_DIR'] = str(path)
    yield path
    if previous is None:
        os.environ.pop('REPSEG_CACHE_DIR', None)
    else:
        os.environ['REPSEG_CACHE_DIR'] = previous


@pytest.fixture(autouse=True)
def restore_cuda_backend_flags():
    """Tools run in-process (benchmark) turn cudnn.benchmark and TF32 on for CUDA; no later
    test, in any module, may inherit that."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
     torch.backends.cuda.matmul.allow_tf32) = saved


@pytest.fixture(scope='session')
def city_copy(tmp_path_factory):
    """``city_copy(folder, num_train=4, num_val=2, seed=1)``: a fresh copy, in
    ``folder``, of a toy city of 64x128 frames, to break; each city is drawn once."""
    from repseg.data.toy_city import make_toy_cityscapes

    drawn = {}

    def copy(folder, num_train=4, num_val=2, seed=1):
        key = (num_train, num_val, seed)
        if key not in drawn:
            drawn[key] = tmp_path_factory.mktemp('city')
            make_toy_cityscapes(drawn[key], num_train, num_val, size=(64, 128), seed=seed)
        return Path(shutil.copytree(drawn[key], Path(folder) / 'toy'))

    return copy


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``cuda`` on machines without a CUDA GPU (CI)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (on a GPU machine: pytest -m cuda)')
    for item in items:
        if item.get_closest_marker('cuda') is not None:
            item.add_marker(skip)


@pytest.fixture(scope='module')
def single_thread():
    """Run a module's torch ops on one thread. The tests use tiny inputs, where a second
    OpenMP thread gains little and, on a shared 2-core machine, spin-waits badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def randomize_bn():
    """``randomize_bn(model, seed=0)``: random BN statistics and affine params."""
    return _randomize_batch_norms


@pytest.fixture(scope='session')
def nan_model():
    """``nan_model(arch, **kwargs)``: a repseg model to load checkpoints into. It skips
    the (slow) init, and any tensor a load misses shows up as NaN in the output."""
    return _nan_model


@pytest.fixture(scope='session')
def randomize_weights():
    """``randomize_weights(model, seed=0)``: default-init convs/linears, random BNs."""
    return _randomize_weights
