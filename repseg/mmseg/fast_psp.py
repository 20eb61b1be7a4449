"""Adaptive average pooling as two small matmuls: a fast pyramid pooling for PSPNet.

PyTorch's ``adaptive_avg_pool2d`` is slow on fp16 channels-last CUDA tensors (about
14 ms per call on an H100 for a 1024x2048 PSPNet, REFERENCES section 5), and the PSP head
calls it four times. Adaptive pooling to ``b`` bins is linear and separable: bin ``i``
along an axis of length ``L`` averages ``[floor(i*L/b), ceil((i+1)*L/b))``, so

    pooled = P_h @ x @ P_w^T,

with ``P_h`` (``b x H``) and ``P_w`` (``b x W``) averaging matrices. Two matmuls run
at memory speed in any layout and dtype, and all pyramid bins (1, 2, 3, 6) come from
one pass: the averaging matrices are stacked (12 rows), the ``12 x 12`` result holds
every bin's output in its diagonal blocks.

Precision: the matmuls run in the input dtype; CUDA and CPU matmuls accumulate
half-precision products in float32. The matrices hold averages (not 0/1 sums), so
intermediate values stay in the input's range and cannot overflow in fp16; their
entries are rounded once to the input dtype (relative error <= 2^-11 in fp16).

Nothing here changes mmseg on import: :func:`use_fast_pyramid_pooling` switches one
built model, in place.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmseg.models.decode_heads.psp_head import PPM
from mmseg.models.utils import resize

OutputSize = Union[int, None, Sequence[Optional[int]]]


def _window_bounds(length, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end (exclusive) of each adaptive-pooling window, as int64 tensors.

    ``length`` may be a Python int or, while tracing for ONNX, a 0-d tensor: the
    integer arithmetic is written with tensor ops so a dynamic-shape export stays exact.
    """
    index = torch.arange(bins)
    start = torch.div(index * length, bins, rounding_mode='floor')
    end = torch.div((index + 1) * length + bins - 1, bins, rounding_mode='floor')
    return start, end


def pooling_matrix(length, bins: Sequence[int], dtype: torch.dtype = torch.float32,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """Averaging matrix of shape ``(sum(bins), length)`` for adaptive pooling.

    Row ``r`` of the block for ``b`` bins averages the window adaptive pooling uses for
    output ``r``: ``[floor(r*L/b), ceil((r+1)*L/b))``. Stacked blocks give every bin
    count in one matmul. Built in float32, then cast to ``dtype``.
    """
    starts, ends = zip(*(_window_bounds(length, b) for b in bins))
    start, end = torch.cat(starts), torch.cat(ends)
    position = torch.arange(length).unsqueeze(0)
    inside = (position >= start.unsqueeze(1)) & (position < end.unsqueeze(1))
    weights = inside.float() / (end - start).unsqueeze(1).float()
    return weights.to(device=device, dtype=dtype)


@lru_cache(maxsize=64)
def _cached_pooling_matrix(length: int, bins: tuple[int, ...], dtype: torch.dtype,
                           device: torch.device) -> torch.Tensor:
    # A matrix first built under torch.inference_mode() would be an inference tensor, which
    # a later forward with autograd on could not use: build cached matrices as normal ones.
    with torch.inference_mode(False):
        return pooling_matrix(length, bins, dtype, device)


def _matrix(x: torch.Tensor, dim: int, bins: tuple[int, ...]) -> torch.Tensor:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # Shapes may be symbolic: build the matrix in the graph, never from the cache.
        length = torch.onnx.operators.shape_as_tensor(x)[dim]
        return pooling_matrix(length, bins, x.dtype, x.device)
    return _cached_pooling_matrix(int(x.shape[dim]), bins, x.dtype, x.device)


def _pool_separable(x: torch.Tensor, bins_h: tuple[int, ...],
                    bins_w: tuple[int, ...]) -> torch.Tensor:
    """``P_h @ x @ P_w^T`` over the spatial axes, in the layout ``x`` is stored in.

    Returns ``(N, C, sum(bins_h), sum(bins_w))``; channels-last in, channels-last out.
    """
    p_h, p_w = _matrix(x, -2, bins_h), _matrix(x, -1, bins_w)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        # NHWC storage: contract W, then H, each over a contiguous (..., L, C) view.
        n, c, h, w = x.shape
        nhwc = x.permute(0, 2, 3, 1)
        rows = torch.matmul(p_w, nhwc.reshape(n * h, w, c))          # (N*H, bw, C)
        rows = rows.reshape(n, h, p_w.shape[0] * c)
        pooled = torch.matmul(p_h, rows)                             # (N, bh, bw*C)
        return pooled.reshape(n, p_h.shape[0], p_w.shape[0], c).permute(0, 3, 1, 2)
    return torch.matmul(torch.matmul(p_h, x), p_w.transpose(0, 1))


def _normalize_output_size(x: torch.Tensor, output_size: OutputSize) -> tuple[int, int]:
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    if len(output_size) != 2:
        raise ValueError(f'output_size must be an int or a pair, got {output_size!r}')
    size = tuple(x.shape[-2 + i] if s is None else s for i, s in enumerate(output_size))
    if any(int(s) < 1 for s in size):
        raise ValueError(f'output_size must be positive, got {output_size!r}')
    return int(size[0]), int(size[1])


def adaptive_avg_pool2d_fast(x: torch.Tensor, output_size: OutputSize) -> torch.Tensor:
    """Drop-in for ``F.adaptive_avg_pool2d`` (3-d or 4-d input, floating dtypes).

    ``output_size`` is an int or an ``(h, w)`` pair; ``None`` keeps that input size.
    """
    if not x.is_floating_point():
        raise TypeError(f'adaptive_avg_pool2d_fast needs a floating tensor, got {x.dtype}')
    out_h, out_w = _normalize_output_size(x, output_size)
    return _pool_separable(x, (out_h,), (out_w,))


def pyramid_avg_pool2d(x: torch.Tensor, bins: Sequence[int]) -> list[torch.Tensor]:
    """Adaptive average pooling of ``x`` (N, C, H, W) to every ``b x b`` in ``bins``.

    One pass over ``x``: the stacked averaging matrices give a ``sum(bins)``-square map
    whose diagonal blocks are the outputs (views into it, in ``x``'s layout).
    """
    bins = tuple(int(b) for b in bins)
    pooled = _pool_separable(x, bins, bins)
    outputs, offset = [], 0
    for b in bins:
        outputs.append(pooled[..., offset:offset + b, offset:offset + b])
        offset += b
    return outputs


class FastAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` computed by :func:`adaptive_avg_pool2d_fast`."""

    def __init__(self, output_size: OutputSize):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d_fast(x, self.output_size)

    def extra_repr(self) -> str:
        return f'output_size={self.output_size}'


class FastPPM(nn.ModuleList):
    """mmseg's ``PPM`` with all pyramid bins pooled in one pass.

    Holds the very same branches (``Sequential(pool, ConvModule)``), so parameters and
    state-dict keys are unchanged; each branch's pool is a :class:`FastAdaptiveAvgPool2d`
    (used if a branch is called on its own), and :meth:`forward` pools every bin at
    once with :func:`pyramid_avg_pool2d`, then runs the rest of each branch.
    """

    def __init__(self, ppm: PPM):
        super().__init__(ppm)
        self.pool_scales = tuple(ppm.pool_scales)
        self.align_corners = ppm.align_corners
        for branch, scale in zip(self, self.pool_scales):
            branch[0] = FastAdaptiveAvgPool2d(scale)

    def branch_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each branch's output before upsampling (``N x channels x b x b``)."""
        outputs = []
        for branch, pooled in zip(self, pyramid_avg_pool2d(x, self.pool_scales)):
            for layer in list(branch)[1:]:
                pooled = layer(pooled)
            outputs.append(pooled)
        return outputs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(out, size=x.size()[2:], mode='bilinear', align_corners=self.align_corners)
                for out in self.branch_outputs(x)]


def use_fast_pyramid_pooling(model: nn.Module) -> int:
    """Switch every mmseg ``PPM`` inside ``model`` to :class:`FastPPM`, in place.

    Numerically equivalent to the original (float rounding), exportable to ONNX (opset
    >= 17; also with dynamic H and W). Returns how many PPMs were switched (0 for models
    without a PSP head); models already switched are left alone.
    """
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, PPM)]
    for name, ppm in targets:
        if not name:
            raise ValueError('use_fast_pyramid_pooling needs a model that contains a PPM, '
                             'not a PPM itself; wrap it with FastPPM(ppm) instead')
        parent_name, _, attr = name.rpartition('.')
        setattr(model.get_submodule(parent_name), attr, FastPPM(ppm))
    return len(targets)
