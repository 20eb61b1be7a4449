"""Export a fused segmentor to ONNX and check it against PyTorch with onnxruntime.

The exported graph is the whole inference path of one image batch:

    image (N, 3, H, W) float32, pixel values 0-255 in the channel order the model's data
    preprocessor expects from mmcv (BGR)  ->  channel swap and mean/std normalization
    (copied from the model's ``SegDataPreProcessor``)  ->  fused backbone and decode head
    ->  bilinear resize to H x W  ->  ``logits`` (N, classes, H, W) float32, or with
    ``labels=True`` the arg-max ``labels`` (N, H, W), uint8 for up to 256 classes
    (int64 otherwise).

RepVGG blocks are fused first (exporting the three-branch model is a known pitfall:
bigger and slower for the same function); a model built from a fused config is used as
it is. PSP pyramid pooling is switched to the matmul form of
:mod:`repseg.mmseg.fast_psp`, which is exact, and exports for any input size (the
exporter maps ``adaptive_avg_pool2d`` only when the feature map divides by every bin).

torch 2.14's ``torch.onnx.export`` defaults to the dynamo exporter, which needs the
``onnxscript`` package; we call the TorchScript-based exporter (``dynamo=False``), which
needs only ``onnx``. The reference for the check is mmseg's own predict path in
'whole' mode (not the sliding window), since the graph sees the whole image.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import ConfigDict

from .errors import InvalidArgumentError, VerificationError
from .fileio import write_atomically
from .inference import labels_of, predict_sample, prepare_for_inference, remove_input_cast
from .onnx_backend import OnnxGraph

DEFAULT_OPSET = 17
#: Largest accepted ``max |onnxruntime - torch|`` on logits.
LOGITS_ATOL = 1e-3
#: Smallest accepted fraction of equal labels (arg-max ties may flip a few pixels).
LABELS_MIN_AGREEMENT = 0.999

PathLike = Union[str, os.PathLike]


class OnnxVerificationError(VerificationError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


def disagreement_error(failed: Sequence[str], out: PathLike) -> OnnxVerificationError:
    """The error of an export whose check failed (``failed``: the descriptions of the
    failing checks); ``out`` was not written."""
    return OnnxVerificationError(
        'onnxruntime and PyTorch disagree beyond the tolerance: ' + '; '.join(failed)
        + f'. {out} was not written. This is a bug in repseg or the exporter: please report '
        'it with the command, the config and torch/onnxruntime versions')


def trace_to_onnx(module: nn.Module, example: torch.Tensor, path: str, output_name: str,
                  dynamic_axes: Optional[dict], opset: int) -> None:
    """Trace ``module`` on ``example`` into the ONNX file ``path`` (input ``image``,
    output ``output_name``) and run ``onnx.checker`` on it: the one exporter call of
    segmentors and classifiers, with the tracer's warnings about our own code hidden."""
    import onnx

    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings('ignore', message='You are using the legacy TorchScript',
                                category=DeprecationWarning)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset,
                          input_names=['image'], output_names=[output_name],
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    onnx.checker.check_model(path, full_check=True)


class SegmentorForExport(nn.Module):
    """A segmentor's inference path as one tensor function (see the module docstring)."""

    def __init__(self, segmentor: nn.Module, labels: bool = False):
        super().__init__()
        self.segmentor = segmentor
        self.labels = labels
        pre = segmentor.data_preprocessor
        self.swap_channels = bool(getattr(pre, 'channel_conversion', False))
        self.normalize = bool(getattr(pre, '_enable_normalize', False))
        if self.normalize:
            self.register_buffer('mean', pre.mean.detach().clone().float().view(1, -1, 1, 1))
            self.register_buffer('std', pre.std.detach().clone().float().view(1, -1, 1, 1))
        self.align_corners = segmentor.decode_head.align_corners
        self.label_dtype = torch.uint8 if segmentor.decode_head.out_channels <= 256 else torch.int64

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.swap_channels:
            x = x[:, [2, 1, 0]]
        if self.normalize:
            x = (x - self.mean) / self.std
        logits = self.segmentor._forward(x)
        logits = nn.functional.interpolate(logits, size=image.shape[2:], mode='bilinear',
                                           align_corners=self.align_corners)
        if self.labels:
            return logits.argmax(dim=1).to(self.label_dtype)
        return logits


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A fused, float32, NCHW, eval-mode copy of ``model`` with the exportable pooling.

    Undoes :func:`repseg.inference.prepare_for_inference`'s fp16/channels-last settings
    if ``model`` had them.
    """
    model = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)
    remove_input_cast(model)
    prepare_for_inference(model, fuse=True, fast_pooling=True)
    model.test_cfg = ConfigDict(mode='whole')
    return model


def export_onnx(model: nn.Module, out: PathLike, shape: Sequence[int] = (512, 1024),
                dynamic: bool = False, labels: bool = False,
                opset: int = DEFAULT_OPSET, batch: int = 1) -> nn.Module:
    """Export ``model`` (an mmseg segmentor, train-time or fused) to ``out`` and run
    ``onnx.checker`` on it. ``out`` is written atomically (after the checker passed).

    Args:
        model: the segmentor; it is not changed (a fused copy is exported).
        out: the ``.onnx`` file to write.
        shape: ``(H, W)`` of the example input.
        dynamic: make batch, height and width dynamic axes.
        labels: output the label map instead of logits.
        opset: ONNX opset (>= 17).
        batch: batch size of the example input (the batch axis is fixed unless
            ``dynamic``).

    Returns:
        The exported module (:class:`SegmentorForExport`), for comparisons.
    """
    if opset < 17:
        raise InvalidArgumentError(f'opset must be >= 17, got {opset}')
    if len(shape) != 2 or min(shape) < 8:
        raise InvalidArgumentError(f'shape must be (H, W) with H, W >= 8, got {tuple(shape)}')
    wrapper = SegmentorForExport(prepare_for_export(model), labels=labels).eval()
    device = next(wrapper.parameters()).device
    example = torch.rand(batch, 3, *shape, device=device) * 255
    output_name = 'labels' if labels else 'logits'
    dynamic_axes = None
    if dynamic:
        spatial = {0: 'batch', 1: 'height', 2: 'width'} if labels else \
            {0: 'batch', 2: 'height', 3: 'width'}
        dynamic_axes = {'image': {0: 'batch', 2: 'height', 3: 'width'}, output_name: spatial}

    write_atomically(out, lambda path: trace_to_onnx(wrapper, example, path, output_name,
                                                     dynamic_axes, opset))
    return wrapper


def export_verified(model: nn.Module, out: PathLike, images: Sequence[np.ndarray],
                    dynamic: bool = False, labels: bool = False,
                    opset: int = DEFAULT_OPSET) -> list:
    """:func:`export_onnx` at the size of ``images[0]``, then :func:`verify_onnx` on every
    image; ``out`` is written (atomically) only if every check passes.

    Returns:
        The :class:`OnnxCheck` of each image.

    Raises:
        OnnxVerificationError: onnxruntime and PyTorch disagree beyond the tolerance on
            some image; any earlier ``out`` is left as it was.
    """
    checks = []

    def write(path: str) -> None:
        wrapper = export_onnx(model, path, images[0].shape[:2], dynamic=dynamic,
                              labels=labels, opset=opset)
        graph = OnnxGraph(path)
        checks.extend(verify_onnx(path, wrapper, image, graph) for image in images)
        failed = [check.describe() for check in checks if not check.passed]
        if failed:
            raise disagreement_error(failed, out)

    write_atomically(out, write)
    return checks


def load_image(path: PathLike, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """An ``H x W x 3`` uint8 BGR image as mmcv reads it, resized to ``shape=(H, W)``."""
    import mmcv

    if not Path(path).is_file():
        raise FileNotFoundError(f'image not found: {path}')
    image = mmcv.imread(str(path))
    if image is None:
        raise InvalidArgumentError(f"cannot read image '{path}': not an image OpenCV can "
                                   'decode (corrupt, truncated or of an unknown type)')
    if shape is not None:
        image = mmcv.imresize(image, (int(shape[1]), int(shape[0])))
    return image


def synthetic_image(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A deterministic ``H x W x 3`` uint8 test image: smooth gradients, blocks and noise.

    Closer to a photo than white noise (large uniform regions and edges), so an arg-max
    comparison is not dominated by near-ties.
    """
    h, w = int(shape[0]), int(shape[1])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([255 * yy / max(h - 1, 1), 255 * xx / max(w - 1, 1),
                      128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)], axis=-1)
    for _ in range(12):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        image[y0:y0 + h // 4, x0:x0 + w // 6] = rng.integers(0, 256, size=3)
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def image_batch(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 -> the ``1 x 3 x H x W`` float32 input of the exported graph."""
    return image.transpose(2, 0, 1)[None].astype(np.float32)


def torch_reference(model: nn.Module, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(classes, H, W)`` and labels ``(H, W)`` from mmseg's predict path.

    ``model`` should be the fused copy (:class:`SegmentorForExport`'s ``segmentor``),
    with its test mode set to 'whole'.
    """
    sample = predict_sample(model, image)
    return (sample.seg_logits.data.float().cpu().numpy(), labels_of([sample])[0].cpu().numpy())


@dataclass
class OnnxCheck:
    """Result of :func:`verify_onnx` for one image."""

    shape: tuple[int, int]
    max_abs_diff: Optional[float]  # logits mode
    label_agreement: float         # fraction of pixels with the same label

    @property
    def passed(self) -> bool:
        if self.max_abs_diff is not None:
            return self.max_abs_diff < LOGITS_ATOL
        return self.label_agreement >= LABELS_MIN_AGREEMENT

    def describe(self) -> str:
        size = f'{self.shape[0]}x{self.shape[1]}'
        if self.max_abs_diff is not None:
            return (f'{size}: max |onnxruntime - torch| on logits = {self.max_abs_diff:.3g} '
                    f'(limit {LOGITS_ATOL:g}); labels equal on '
                    f'{100 * self.label_agreement:.3f}% of pixels')
        return (f'{size}: labels equal on {100 * self.label_agreement:.3f}% of pixels '
                f'(limit {100 * LABELS_MIN_AGREEMENT:g}%)')


def verify_onnx(path: PathLike, wrapper: SegmentorForExport, image: np.ndarray,
                graph: Optional[OnnxGraph] = None) -> OnnxCheck:
    """Compare onnxruntime's output on ``image`` with mmseg's predict path in PyTorch."""
    output = (graph or OnnxGraph(path)).run(image_batch(image))[0]
    logits, labels = torch_reference(wrapper.segmentor, image)
    if wrapper.labels:
        return OnnxCheck(tuple(image.shape[:2]), None,
                         float((output.astype(np.int64) == labels).mean()))
    return OnnxCheck(tuple(image.shape[:2]), float(np.abs(output - logits).max()),
                     float((output.argmax(0) == labels).mean()))
