"""The last step of segmentation, bilinear resize of the logits then arg-max, as one kernel.

mmseg's predict path resizes the ``N x C x H/8 x W/8`` logits to the input size and takes
the arg-max over classes: for Cityscapes at 1024x2048 that writes and reads 19 full-size
maps (80 MB in fp16) to keep 2 M labels. The arg-max only needs, per output pixel, the C
interpolated values, so :class:`FusedResizeArgmax` has ``torch.compile`` (inductor:
Triton on CUDA, C++ on CPU) generate one reduction kernel that interpolates each class
inside the arg-max loop and writes only the labels.

Equal to the eager path except at ties: the kernel interpolates in float32 (for fp16 or
fp32 logits; float64 stays float64) and never rounds the interpolated value to the
logits' dtype, so labels can differ where the top two classes are within rounding of each
other. Compiling takes seconds (once per shape and dtype in a process); where it fails,
for example without a C++ compiler on CPU, the eager path is used and the error kept.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

from .fallback import error_summary


def resize_argmax(logits: torch.Tensor, size: Sequence[int],
                  align_corners: bool = False) -> torch.Tensor:
    """``argmax(interpolate(logits, size, 'bilinear'), dim=1)``: ``N x H x W`` int64 labels,
    as mmseg's predict path computes them (eager: the full-size logits are materialised)."""
    resized = F.interpolate(logits, size=tuple(int(s) for s in size), mode='bilinear',
                            align_corners=align_corners)
    return resized.argmax(dim=1)


class FusedResizeArgmax:
    """:func:`resize_argmax` compiled into one kernel; eager if compiling fails.

    The first call for each input shape, dtype, layout and device compiles (and is
    guarded: a failure switches this object to eager for good and keeps the reason in
    ``error``); later calls run the compiled kernel directly.
    """

    def __init__(self):
        self._compiled = torch.compile(resize_argmax, dynamic=False, fullgraph=True)
        self._verified: set = set()
        self.error: Optional[str] = None

    @property
    def compiled(self) -> bool:
        """Whether calls take the compiled kernel (False once compiling has failed)."""
        return self.error is None

    def __call__(self, logits: torch.Tensor, size: Sequence[int],
                 align_corners: bool = False) -> torch.Tensor:
        size = tuple(int(s) for s in size)
        if self.error is not None:
            return resize_argmax(logits, size, align_corners)
        key = (tuple(logits.shape), logits.stride(), logits.dtype, logits.device, size,
               align_corners)
        if key in self._verified:
            return self._compiled(logits, size, align_corners)
        try:
            labels = self._compiled(logits, size, align_corners)
        except Exception as error:  # noqa: BLE001 - any compiler failure: keep it, go eager
            self.error = error_summary(error)
            print_log(f'compiled resize + arg-max failed, using the eager path: {self.error}',
                      logger='current', level=30)
            return resize_argmax(logits, size, align_corners)
        self._verified.add(key)
        return labels
