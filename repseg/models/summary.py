"""A per-arch check that fusion is exact: parameters and fused-vs-train output difference."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn

from ..analysis import count_params
from .arch import ARCH_SETTINGS
from .reparam import reparameterize
from .repvgg import create_model


@dataclass
class ArchCheck:
    arch: str
    train_params: int
    deploy_params: int
    max_abs_diff: float
    max_abs_output: float
    seconds: float


@torch.no_grad()
def randomize_batch_norms(model: nn.Module, seed: int = 0,
                          calibrate: Optional[Callable[[nn.Module], Any]] = None) -> nn.Module:
    """Give every BN random affine parameters and running statistics (seeded; in place).

    Freshly built BNs are the identity in eval mode, which would hide fusion errors, and
    through dozens of random convs the activations shrink towards zero, so a random
    segmentor predicts one class everywhere (label agreements then mean nothing, and a
    GPU would time float16 zeros). Variances and gammas stay near 1 so a deep network
    neither explodes nor collapses. With ``calibrate`` the running statistics are
    instead those of the batch that ``calibrate(model)`` runs through the model (BNs in
    train mode, cumulative averaging): unit-scale activations in every layer, as trained
    BNs give. The model is left in eval mode then. Run it before fusing.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        for tensor, low, high in ((module.running_mean, -0.2, 0.2),
                                  (module.running_var, 0.5, 1.5),
                                  (module.weight, 0.5, 1.0),
                                  (module.bias, -0.2, 0.2)):
            if tensor is not None:
                rand = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
                tensor.copy_(low + (high - low) * rand)
    if calibrate is None:
        return model
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        calibrate(model)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return model


def norm_layer_summary(model: nn.Module) -> str:
    """How many normalization layers of each type ``model`` holds, e.g. '87 SyncBatchNorm'.

    Logged at the start of training: mmengine silently turns SyncBN into BN when a run is
    not distributed, and repseg does on machines without CUDA.
    """
    counts = Counter(type(m).__name__ for m in model.modules()
                     if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm,
                                       nn.LayerNorm)))
    return ', '.join(f'{n} {name}' for name, n in sorted(counts.items())) or 'none'


@torch.no_grad()
def check_arch(arch: str, size: int = 64, seed: int = 0) -> ArchCheck:
    """Build ``arch``, fuse it, and compare outputs in eval mode (float32)."""
    start = time.perf_counter()
    model = randomize_batch_norms(create_model(arch), seed).eval()
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    expected = model(image)
    fused = reparameterize(model, inplace=True)
    diff = (fused(image) - expected).abs().max().item()
    return ArchCheck(arch, count_params(create_model(arch)), count_params(fused), diff,
                     expected.abs().max().item(), time.perf_counter() - start)


def check_archs(archs: Optional[Iterable[str]] = None, size: int = 64):
    """Yield :class:`ArchCheck` for each arch (all of them by default)."""
    for arch in archs or ARCH_SETTINGS:
        yield check_arch(arch, size)


def format_row(check: ArchCheck) -> str:
    return (f'| {check.arch:<5} | {check.train_params:>12,} | {check.deploy_params:>12,} | '
            f'{check.max_abs_diff:.2e} (of {check.max_abs_output:.2f}) | {check.seconds:5.1f} |')


TABLE_HEADER = ('| arch  | train params | deploy params | fused vs train max abs diff | s |\n'
                '|-------|-------------:|--------------:|-----------------------------|---|')
