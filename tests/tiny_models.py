"""Helpers of the speed, export and inference tests: small random models, tool loading."""
import contextlib
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import ConfigDict

from repseg.mmseg.builder import build_segmentor, load_config
from repseg.models.summary import randomize_batch_norms as random_batch_norms  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / 'tests' / 'configs' / 'pspnet_repvgg_a0_tiny.py'
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'pspnet_repvgg_a0_toycity.py'
#: The demo config with narrower heads (faster tools tests on the toy city).
NARROW = {'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 8}


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for cuDNN convolutions and matmuls, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def spread_predictions(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw the classifier (``conv_seg``) on standardized features of a sample batch.

    A random network's features share a large positive mean (after ReLU), so a random
    classifier predicts one class everywhere, which would make every label comparison
    trivial. Centring and scaling the classifier on the features gives logits that vary
    from pixel to pixel, with many classes predicted.
    """
    generator = torch.Generator().manual_seed(seed)
    captured = []
    conv = model.decode_head.conv_seg
    handle = conv.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    model._forward(torch.randn(2, 3, 64, 96, generator=generator))
    handle.remove()
    features = captured[0]
    mean, std = features.mean(dim=(0, 2, 3)), features.std(dim=(0, 2, 3))
    std = std.clamp_min(0.5 * std.mean())  # near-constant channels must not dominate
    weight = torch.randn(conv.out_channels, conv.in_channels, generator=generator)
    weight = 3 * weight / conv.in_channels ** 0.5 / std
    conv.weight.copy_(weight[:, :, None, None])
    conv.bias.copy_(-weight @ mean)
    return model


def narrow_demo_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the narrow demo config and a random-weight train-time checkpoint of it into
    ``folder``; return both paths (what the tools take)."""
    cfg = load_config(DEMO_CONFIG, NARROW)
    cfg_path, checkpoint = Path(folder) / 'narrow.py', Path(folder) / 'train.pth'
    cfg.dump(str(cfg_path))
    torch.manual_seed(seed)
    torch.save({'state_dict': build_segmentor(cfg).state_dict(), 'meta': {}}, checkpoint)
    return cfg_path, checkpoint


def tiny_segmentor(seed: int = 0) -> nn.Module:
    """PSPNet on a dilated RepVGG-A0 with narrow heads: random, seeded, eval mode,
    predicting varied classes (:func:`spread_predictions`)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_segmentor(TINY_CONFIG)
    model.test_cfg = ConfigDict(mode='whole')
    return spread_predictions(random_batch_norms(model, seed).eval(), seed)


@pytest.fixture
def one_cpu_thread():
    """Run a test on one torch thread, then restore the count.

    On a shared 2-core machine, torch's OpenMP threads wait on each other whenever another
    process takes a core; one thread was 3-7x faster there and times steadily.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'pspnet_repvgg_a0_toycity.py'


def toy_options(data_root) -> dict:
    """``--cfg-options`` turning the demo config into the tiny test model (the heads of
    ``TINY_CONFIG``) on the toy city at ``data_root``, with loaders in the main process."""
    options = {'model.decode_head.channels': 32, 'model.auxiliary_head.channels': 16,
               'model.backbone.dilation': None}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options[f'{loader}.dataset.data_root'] = str(data_root)
        options[f'{loader}.num_workers'] = 0
        options[f'{loader}.persistent_workers'] = False
    return options


def briefly_trained_segmentor(data_root, iters: int = 12, batch: int = 2,
                              seed: int = 0) -> nn.Module:
    """The tiny demo segmentor trained for ``iters`` SGD steps on whole toy-city frames.

    A few steps are enough for what quantization tests need and random weights lack:
    BN statistics of real activations and confident, spatially coherent predictions
    (a random network's arg-max is a near-tie almost everywhere).
    """
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    from repseg.mmseg.builder import load_config

    cfg = load_config(DEMO_CONFIG, toy_options(data_root))
    dataset_cfg = cfg.train_dataloader.dataset.copy()
    dataset_cfg.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                            dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
    numpy_state = np.random.get_state()  # mmcv's RandomFlip draws from numpy's global RNG
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        model = build_segmentor(cfg)
        dataset = DATASETS.build(dataset_cfg)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(iters):
            indices = torch.randint(len(dataset), (batch,), generator=generator).tolist()
            data = model.data_preprocessor(pseudo_collate([dataset[i] for i in indices]), True)
            losses = model.loss(data['inputs'], data['data_samples'])
            loss = sum(v for k, v in losses.items() if 'loss' in k)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    np.random.set_state(numpy_state)
    model.test_cfg = ConfigDict(mode='whole')
    return model.eval()
