"""Helpers of the speed, export and inference tests: small random models, tool loading."""
import importlib.util
from pathlib import Path
from types import ModuleType

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
