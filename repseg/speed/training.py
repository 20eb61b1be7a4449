"""Training throughput: one iteration of mmengine's ``train_step`` on a random batch.

What ``tools/train.py`` runs per iteration, minus data loading: the data preprocessor
(normalize, pad to the crop), forward with both heads, losses, backward and an SGD step
(the configs' lr 0.01, momentum 0.9, weight decay 1e-4). On CUDA the optimizer wrapper
is mmengine's ``AmpOptimWrapper`` (float16 autocast, dynamic loss scale), as with
``--amp``; on the CPU it is the plain ``OptimWrapper`` (float32). One process, so BN is
plain BN (SyncBN only differs by its all-reduce across GPUs).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..inference import cast_inputs

#: SGD settings of the paper's schedule (configs/_base_/schedules/poly_40e.py).
SGD = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
NUM_CLASSES = 19


def optim_wrapper_for(model: nn.Module, amp: bool):
    """mmengine's optimizer wrapper around SGD: ``AmpOptimWrapper`` if ``amp``."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    optimizer = torch.optim.SGD(model.parameters(), **SGD)
    if amp:
        return AmpOptimWrapper(optimizer=optimizer, loss_scale='dynamic')
    return OptimWrapper(optimizer=optimizer)


def random_batch(batch: int, shape: Sequence[int], device: str, seed: int = 0) -> dict:
    """A batch as the data loader gives it: uint8 ``3 x H x W`` images and
    ``SegDataSample`` s with random trainId labels (0-18), on ``device``."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    generator = torch.Generator().manual_seed(seed)
    height, width = int(shape[0]), int(shape[1])
    inputs, samples = [], []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (1, height, width), generator=generator)
        sample = SegDataSample(metainfo=dict(img_shape=(height, width),
                                             ori_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=labels.to(device))
        inputs.append(image.to(device))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def training_step(model: nn.Module, batch: dict, amp: bool,
                  channels_last: bool = False) -> Callable[[], dict]:
    """Prepare ``model`` (in place) for training and return one iteration as a call.

    ``channels_last`` stores weights and the normalized batch as NHWC.
    """
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        cast_inputs(model, next(model.parameters()).dtype, torch.channels_last)
    wrapper = optim_wrapper_for(model, amp)

    def step() -> dict:
        return model.train_step(batch, wrapper)

    return step
