"""PSP's bottleneck without the upsampled pyramid: same result, a third less head work.

mmseg's ``PSPHead`` upsamples its four pooled bins (``b = 1, 2, 3, 6``; 512 channels
each) back to the ``h x w`` feature map, concatenates them with the map ``x`` (C
channels) and runs a 3x3 conv (the bottleneck) over all ``C + 2048`` channels. For
PSPNet-B2 at 1024x2048 that conv is 21% of the model's multiply-adds, and the four
upsamples and the concatenation write 300 MB per image in fp16. Convolution is linear in
its input channels, so

    conv(cat(x, up(y))) = conv_x(x) + conv_y(up(y)),

and the bilinear upsample of a ``b x b`` map is a pair of matrices, ``U_h`` (``h x b``) and
``U_w`` (``w x b``). Tap ``(u, v)`` of a 3x3 conv with padding 1 reads ``up(y)`` shifted by
``(u - 1, v - 1)``, so with ``S_u`` the rows of ``U_h`` shifted by ``u - 1`` (zero rows
outside the image: the conv's zero padding),

    conv_y(up(y))[o] = sum_{u,v} S_u @ Z_uv[o] @ T_v^T,   Z_uv[o] = sum_c W_y[o, c, u, v] y[c],

where ``Z_uv`` is a ``b x b`` map per output channel (tiny), ``T_v`` the shifted ``U_w``.
Stacking taps and bins along the contraction (3 taps x 12 bin rows = 36) turns the whole
pyramid term into two matmuls with K = 36: ``(h x 36) @ Z (36 x 36, block-diagonal over
bins) @ (36 x w)``, written once, in ``x``'s memory format. What remains of the bottleneck
is a 3x3 conv over ``C`` channels, plus that term, its bias and ReLU: one
``torch.cudnn_convolution_add_relu`` on CUDA (:mod:`.conv_relu`).

Exact up to rounding; the interpolation matrices are built in float64 from the formula
``F.interpolate`` uses (source ``(i + 0.5) * b / L - 0.5``, clamped at 0; or
``i * (b - 1) / (L - 1)`` with ``align_corners``), so they agree with it to float32
rounding of the weights.

:func:`use_factored_psp_head` re-classes each ``PSPHead`` in place to
:class:`FactoredPSPHead` (same attributes and state-dict keys; only
``_forward_feature`` differs), after folding its bottleneck's BN
(:class:`~.conv_relu.ConvBNReLU`). The split bottleneck weights are cached as
non-persistent buffers: prepare (cast, load weights) before factoring.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.psp_head import PSPHead

from ..mmseg.fast_psp import FastPPM
from .conv_relu import ConvBNReLU, fold_batch_norm_into_conv_, why_not_foldable


def interpolation_matrix(out_length: int, in_length: int, align_corners: bool = False,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(out_length, in_length)`` matrix of 1-d linear interpolation as ``F.interpolate``
    does it (bilinear is this matrix along each axis)."""
    index = torch.arange(out_length, dtype=torch.float64)
    if align_corners:
        scale = (in_length - 1) / (out_length - 1) if out_length > 1 else 0.0
        source = index * scale
    else:
        source = ((index + 0.5) * (in_length / out_length) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_length - 1)
    high = (low + 1).clamp(max=in_length - 1)
    weight_high = source - low
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    rows = torch.arange(out_length)
    matrix.index_put_((rows, low), 1 - weight_high, accumulate=True)
    matrix.index_put_((rows, high), weight_high, accumulate=True)
    return matrix.to(dtype)


def tap_matrix(length: int, bins: Sequence[int], kernel: int, dilation: int,
               align_corners: bool) -> torch.Tensor:
    """``(length, kernel * sum(bins))``: for each bin and conv tap, the upsampling matrix
    shifted as that tap reads it (columns ordered bin, tap, source position)."""
    pad = dilation * (kernel - 1) // 2
    blocks = []
    for b in bins:
        padded = torch.zeros(length + 2 * pad, b, dtype=torch.float64)
        padded[pad:pad + length] = interpolation_matrix(length, b, align_corners)
        blocks += [padded[tap * dilation:tap * dilation + length] for tap in range(kernel)]
    return torch.cat(blocks, dim=1)


@lru_cache(maxsize=32)
def _cached_tap_matrix(length: int, bins: tuple, kernel: int, dilation: int,
                       align_corners: bool, dtype: torch.dtype,
                       device: torch.device) -> torch.Tensor:
    # Built outside inference mode, so a later forward with autograd on can use it.
    with torch.inference_mode(False):
        return tap_matrix(length, bins, kernel, dilation, align_corners).to(device, dtype)


def pyramid_term(bin_maps: Sequence[torch.Tensor], bin_weights: Sequence[torch.Tensor],
                 size: Sequence[int], align_corners: bool, dilation: int = 1,
                 channels_last: bool = False) -> torch.Tensor:
    """``conv_y(up(y))`` of the module doc without upsampling: ``N x O x h x w``.

    Args:
        bin_maps: each bin's ``N x C_b x b x b`` map (the PPM branches' outputs).
        bin_weights: the bottleneck weights reading each bin, ``O x C_b x k x k``.
        size: ``(h, w)`` of the feature map.
        channels_last: return NHWC storage (as ``x`` is stored), else NCHW.
    """
    bins = tuple(int(m.shape[-1]) for m in bin_maps)
    kernel = int(bin_weights[0].shape[-1])
    ref = bin_maps[0]
    rows = _cached_tap_matrix(int(size[0]), bins, kernel, dilation, align_corners,
                              ref.dtype, ref.device)
    cols = _cached_tap_matrix(int(size[1]), bins, kernel, dilation, align_corners,
                              ref.dtype, ref.device)
    n, out_channels, taps = ref.shape[0], bin_weights[0].shape[0], kernel * sum(bins)
    z = ref.new_zeros(n, out_channels, taps, taps)
    offset = 0
    for y, weight in zip(bin_maps, bin_weights):
        b = y.shape[-1]
        block = torch.einsum('ocuv,ncpq->noupvq', weight, y).reshape(
            n, out_channels, kernel * b, kernel * b)
        z[:, :, offset:offset + kernel * b, offset:offset + kernel * b] = block
        offset += kernel * b
    half = torch.matmul(z, cols.transpose(0, 1))                      # N x O x 36 x w
    if not channels_last:
        return torch.matmul(rows, half)                               # N x O x h x w
    width = half.shape[-1]
    flat = half.permute(0, 2, 3, 1).reshape(n, taps, width * out_channels)
    out = torch.matmul(rows, flat)                                    # N x h x (w*O)
    return out.reshape(n, -1, width, out_channels).permute(0, 3, 1, 2)


class FactoredPSPHead(PSPHead):
    """A ``PSPHead`` whose bottleneck never sees the upsampled pyramid (module doc).

    Not built directly: :func:`use_factored_psp_head` re-classes a built head, whose
    bottleneck is a :class:`~.conv_relu.ConvBNReLU` and whose split weights it caches.
    """

    def _forward_feature(self, inputs):
        x = self._transform_inputs(inputs)
        ppm = self.psp_modules
        if isinstance(ppm, FastPPM):
            bin_maps = ppm.branch_outputs(x)
        else:
            bin_maps = [branch(x) for branch in ppm]
        bottleneck = self.bottleneck
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and \
            not x.is_contiguous()
        weights = self.factored_bin_weights.split(self.channels, dim=1)
        term = pyramid_term(bin_maps, weights, x.shape[-2:], self.align_corners,
                            bottleneck.dilation[0], channels_last)
        return bottleneck.conv_add_relu(x, self.factored_x_weight, term,
                                         bottleneck.norm.bias)


def _why_not_factorable(head: PSPHead) -> Optional[str]:
    """Why a PSPHead's bottleneck cannot be factored, or None if it can."""
    bottleneck = head.bottleneck
    if isinstance(bottleneck, ConvModule):
        reason = why_not_foldable(bottleneck)
        if reason is not None:
            return f'bottleneck: {reason}'
    elif not isinstance(bottleneck, ConvBNReLU):
        return f'bottleneck is a {type(bottleneck).__name__}'
    conv = bottleneck.conv
    kernel, dilation, padding = conv.kernel_size, conv.dilation, conv.padding
    if conv.stride != (1, 1) or conv.groups != 1 or kernel[0] != kernel[1] or \
            kernel[0] % 2 == 0 or dilation[0] != dilation[1] or \
            padding != (dilation[0] * (kernel[0] - 1) // 2,) * 2:
        return (f'bottleneck conv with kernel {kernel}, stride {conv.stride}, padding '
                f'{padding}, dilation {dilation}, groups {conv.groups}')
    if head.input_transform is not None:
        return f'input_transform {head.input_transform!r}'
    return None


@torch.no_grad()
def use_factored_psp_head(model: nn.Module, use_cudnn: bool = True) -> dict:
    """Re-class every ``PSPHead`` in ``model`` to :class:`FactoredPSPHead`, in place.

    Eval mode only (the bottleneck's BN is folded). Returns ``{name: None}`` for each head
    factored and ``{name: reason}`` for each left alone. ``use_cudnn`` as in
    :func:`~.conv_relu.use_conv_relu`, for the bottleneck's conv + add + bias + ReLU.
    """
    outcome = {}
    for name, head in model.named_modules():
        if not isinstance(head, PSPHead) or isinstance(head, FactoredPSPHead):
            continue
        reason = _why_not_factorable(head)
        outcome[name] = reason
        if reason is not None:
            continue
        if isinstance(head.bottleneck, ConvModule):
            fold_batch_norm_into_conv_(head.bottleneck.conv, head.bottleneck.norm)
            head.bottleneck = ConvBNReLU(head.bottleneck, use_cudnn)
        weight = head.bottleneck.conv.weight
        in_channels = head.in_channels  # x's channels; the bins follow it in the concat
        memory_format = (torch.channels_last if weight.is_contiguous(
            memory_format=torch.channels_last) and not weight.is_contiguous()
            else torch.contiguous_format)
        head.register_buffer('factored_x_weight', weight[:, :in_channels].contiguous(
            memory_format=memory_format), persistent=False)
        head.register_buffer('factored_bin_weights', weight[:, in_channels:].contiguous(
            memory_format=memory_format), persistent=False)
        head.__class__ = FactoredPSPHead
    return outcome
