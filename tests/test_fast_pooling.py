"""The matmul form of adaptive average pooling equals PyTorch's, and so does a PSP head."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from repseg.mmseg.fast_psp import (FastAdaptiveAvgPool2d, FastPPM, adaptive_avg_pool2d_fast,
                                   pooling_matrix, pyramid_avg_pool2d, use_fast_pyramid_pooling)
from tiny_models import random_batch_norms

SIZES = [(7, 9), (8, 8), (13, 17), (90, 90)]
BINS = (1, 2, 3, 6)


def features(h, w, channels_last=False, seed=0):
    x = torch.randn(2, 24, h, w, generator=torch.Generator().manual_seed(seed)) * 3 + 1
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('channels_last', [False, True])
def test_equals_adaptive_avg_pool_fp32(size, channels_last):
    x = features(*size, channels_last)
    for bins in BINS:
        torch.testing.assert_close(adaptive_avg_pool2d_fast(x, bins),
                                   F.adaptive_avg_pool2d(x, bins), atol=1e-5, rtol=0)
    for out, bins in zip(pyramid_avg_pool2d(x, BINS), BINS):
        torch.testing.assert_close(out, F.adaptive_avg_pool2d(x, bins), atol=1e-5, rtol=0)


@pytest.mark.parametrize('size', SIZES)
def test_fp16_channels_last_close_to_fp32_reference(size):
    x = features(*size, channels_last=True)
    half = x.half()
    for out, bins in zip(pyramid_avg_pool2d(half, BINS), BINS):
        reference = F.adaptive_avg_pool2d(x, bins)
        assert out.dtype == torch.float16
        assert out.stride(1) == 1  # channels innermost, as in the input
        error = (out.float() - reference).abs().max().item()
        assert error <= 1e-3 * reference.abs().max().item() + 1e-3, (bins, error)


def test_rectangular_and_partial_output_sizes_and_3d_input():
    x = features(13, 17)
    for size in [(2, 5), (None, 4), (6, None), 17]:
        torch.testing.assert_close(adaptive_avg_pool2d_fast(x, size),
                                   F.adaptive_avg_pool2d(x, size), atol=1e-5, rtol=0)
    torch.testing.assert_close(FastAdaptiveAvgPool2d(3)(x[0]), F.adaptive_avg_pool2d(x[0], 3),
                               atol=1e-5, rtol=0)


def test_pooling_matrix_rows_are_the_adaptive_windows():
    matrix = pooling_matrix(7, (3,))
    # windows of 7 -> 3: [0, 3), [2, 5), [4, 7)
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0],
                             [0, 0, 0, 0, 1, 1, 1]]) / 3
    torch.testing.assert_close(matrix, expected)
    assert pooling_matrix(90, BINS).shape == (12, 90)


def test_rejects_integer_input_and_bad_sizes():
    with pytest.raises(TypeError, match='floating'):
        adaptive_avg_pool2d_fast(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match='positive'):
        adaptive_avg_pool2d_fast(torch.ones(1, 1, 4, 4), 0)


def psp_head():
    head = MODELS.build(dict(type='PSPHead', in_channels=64, channels=16, num_classes=5,
                             pool_scales=BINS, in_index=0, norm_cfg=dict(type='BN'),
                             align_corners=False))
    return random_batch_norms(head).eval()


def test_psp_head_with_fast_pooling_equals_original():
    head = psp_head()
    fast = copy.deepcopy(head)
    assert use_fast_pyramid_pooling(fast) == 1
    assert use_fast_pyramid_pooling(fast) == 0  # already switched
    assert isinstance(fast.psp_modules, FastPPM)
    assert fast.state_dict().keys() == head.state_dict().keys()
    with torch.no_grad():
        for size in [(13, 17), (8, 8)]:
            inputs = [features(*size, seed=1).repeat(1, 3, 1, 1)[:, :64]]
            torch.testing.assert_close(fast(inputs), head(inputs), atol=1e-5, rtol=1e-5)
            # each branch still works on its own, as in mmseg's PPM
            torch.testing.assert_close(fast.psp_modules[2](inputs[0]),
                                       head.psp_modules[2](inputs[0]), atol=1e-5, rtol=1e-5)


def test_psp_head_fp16_channels_last_close_to_fp32():
    head = psp_head()
    fast = copy.deepcopy(head).half().to(memory_format=torch.channels_last)
    use_fast_pyramid_pooling(fast)
    x = features(13, 17, seed=2).repeat(1, 3, 1, 1)[:, :64]
    with torch.no_grad():
        reference = head([x])
        out = fast([x.half().contiguous(memory_format=torch.channels_last)])
    assert out.dtype == torch.float16
    assert (out.float() - reference).abs().max() <= 2e-2 * reference.abs().max()


def test_matrices_cached_under_inference_mode_still_serve_autograd():
    """A matrix first built under torch.inference_mode() must not poison later training."""
    x = torch.randn(1, 4, 11, 5)
    with torch.inference_mode():
        adaptive_avg_pool2d_fast(x, 3)
    y = x.clone().requires_grad_()
    adaptive_avg_pool2d_fast(y, 3).sum().backward()
    expected = torch.autograd.grad(F.adaptive_avg_pool2d(y, 3).sum(), y)[0]
    torch.testing.assert_close(y.grad, expected)
