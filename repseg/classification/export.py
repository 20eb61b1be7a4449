"""Export a RepVGG classifier to ONNX and check the graph with ONNX Runtime: the library
of ``tools/export_onnx.py`` for classification configs.

The graph is what ``tools/test.py`` runs for an ``.onnx`` classifier
(:class:`repseg.classification.runner.OnnxRuntimeClassifier`): ``image``, float32
N x 3 x H x W, pixel values 0-255 in mmcv's BGR order as the test pipeline packs them,
to ``logits``, N x classes. The channel swap, mean and std of the classifier's data
preprocessor are inside the graph; batch, height and width are dynamic (a test's last
batch is smaller than the others). RepVGG blocks are fused first: the three-branch graph
computes the same function, bigger and slower.

The check runs the written graph on a few images and compares it with the PyTorch
classifier as it was given (train-time or fused), fed through its own data preprocessor
(mmpretrain's ``ClsDataPreprocessor``), not through the export wrapper: fusion, the
normalisation inside the graph and the exporter are checked together, and a graph that
fails is not kept (:class:`repseg.export.OnnxVerificationError`).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..export import (DEFAULT_OPSET, LOGITS_ATOL, disagreement_error, synthetic_image,
                      trace_to_onnx)
from ..fileio import write_atomically
from ..models.reparam import reparameterize
from ..onnx_backend import OnnxGraph

PathLike = Union[str, os.PathLike]
#: Generated images in the check's batch at the export size.
CHECK_BATCH = 4
#: The input size when the test pipeline has no ``CenterCrop`` (ImageNet's).
DEFAULT_SIZE = 224
#: Batch, height and width vary (a test's last batch is smaller); logits are N x classes.
DYNAMIC_AXES = {'image': {0: 'batch', 2: 'height', 3: 'width'}, 'logits': {0: 'batch'}}


class ClassifierForExport(nn.Module):
    """An ``ImageClassifier`` as one graph from BGR 0-255 pixels to logits (the mean,
    std and channel swap of its data preprocessor inside)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        pre = classifier.data_preprocessor
        self.classifier = classifier
        self.register_buffer('mean', pre.mean.detach().float().clone())
        self.register_buffer('std', pre.std.detach().float().clone())
        self.to_rgb = bool(pre.to_rgb)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.to_rgb:
            image = image.flip(1)
        return self.classifier((image - self.mean) / self.std, mode='tensor')


def export_classifier_onnx(classifier: nn.Module, out: PathLike, size: int = DEFAULT_SIZE,
                           opset: int = DEFAULT_OPSET) -> ClassifierForExport:
    """Export a fused, float32 copy of ``classifier`` (not changed) to ``out``
    for :class:`~repseg.classification.runner.OnnxRuntimeClassifier` (dynamic batch,
    height and width; ``size`` is the example input's side), after ``onnx.checker``
    passed. Returns the exported module."""
    wrapper = ClassifierForExport(reparameterize(copy.deepcopy(classifier)).eval().float())
    example = torch.rand(1, 3, size, size) * 255
    write_atomically(out, lambda path: trace_to_onnx(wrapper, example, path, 'logits',
                                                     DYNAMIC_AXES, opset))
    return wrapper


@torch.no_grad()
def reference_logits(classifier: nn.Module, images: np.ndarray) -> np.ndarray:
    """PyTorch's logits for ``N x H x W x 3`` uint8 BGR images, through the classifier's
    own data preprocessor (as ``tools/test.py`` runs the PyTorch model)."""
    inputs = [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
              for image in images]
    batch = classifier.data_preprocessor({'inputs': inputs}, False)['inputs']
    return classifier(batch.float(), mode='tensor').float().numpy()


@dataclass
class ClassifierCheck:
    """ONNX Runtime against PyTorch on one batch (:func:`verify_classifier_onnx`)."""

    shape: tuple[int, int, int]   # N, H, W
    max_abs_diff: float
    limit: float                  # LOGITS_ATOL, scaled by the largest reference logit
    top1_equal: int               # images whose top-1 class is the same, near-ties counted

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit and self.top1_equal == self.shape[0]

    def describe(self) -> str:
        n, h, w = self.shape
        return (f'{n} x 3 x {h} x {w}: max |onnxruntime - torch| on logits = '
                f'{self.max_abs_diff:.3g} (limit {self.limit:.3g}); top-1 equal on '
                f'{self.top1_equal}/{n} images')


def verify_classifier_onnx(graph: OnnxGraph, classifier: nn.Module,
                           images: np.ndarray) -> ClassifierCheck:
    """Run ``graph`` and ``classifier`` (eval mode) on ``images`` (``N x H x W x 3``
    uint8 BGR). The logits may differ by :data:`~repseg.export.LOGITS_ATOL` times the
    largest reference logit (at least 1: an untrained model's logits can be large); a
    top-1 class counts as equal where the reference's best two lie within that limit."""
    output = graph.run(images.transpose(0, 3, 1, 2).astype(np.float32))
    reference = reference_logits(classifier, images)
    if output.shape != reference.shape:
        return ClassifierCheck(tuple(images.shape[:3]), float('inf'), 0.0, 0)
    limit = LOGITS_ATOL * max(1.0, float(np.abs(reference).max()))
    best_two = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    tie = (best_two[:, 1] - best_two[:, 0] <= limit) if best_two is not None else False
    equal = (output.argmax(1) == reference.argmax(1)) | tie
    return ClassifierCheck(tuple(images.shape[:3]), float(np.abs(output - reference).max()),
                           limit, int(equal.sum()))


def export_classifier_verified(classifier: nn.Module, out: PathLike,
                               batches: Sequence[np.ndarray], size: int,
                               opset: int = DEFAULT_OPSET) -> list[ClassifierCheck]:
    """:func:`export_classifier_onnx`, then :func:`verify_classifier_onnx` on every batch
    (``N x H x W x 3`` uint8 BGR); ``out`` is written (atomically) only if every check
    passes, else an earlier ``out`` is left as it was.

    Raises:
        OnnxVerificationError: ONNX Runtime and PyTorch disagree on some batch.
    """
    classifier = classifier.eval()
    checks: list[ClassifierCheck] = []

    def write(path: str) -> None:
        export_classifier_onnx(classifier, path, size=size, opset=opset)
        graph = OnnxGraph(path)
        checks.extend(verify_classifier_onnx(graph, classifier, batch) for batch in batches)
        failed = [check.describe() for check in checks if not check.passed]
        if failed:
            raise disagreement_error(failed, out)

    write_atomically(out, write)
    return checks


# The tool's inputs -----------------------------------------------------------------------

def eval_crop_size(cfg) -> int:
    """The side of the images the test pipeline feeds the model: its ``CenterCrop``'s
    ``crop_size`` (``tools/test.py`` runs an ``.onnx`` model through that pipeline)."""
    for step in cfg.test_dataloader.dataset.pipeline:
        if str(step.get('type', '')).split('.')[-1] == 'CenterCrop':
            crop = step['crop_size']
            return int(crop if isinstance(crop, int) else max(crop))
    return DEFAULT_SIZE


def pipeline_image(cfg, path: PathLike) -> np.ndarray:
    """``path`` as the config's test pipeline hands it to the model: an ``H x W x 3``
    uint8 BGR array (decoded, resized and cropped)."""
    from mmengine.dataset import Compose
    from mmpretrain.utils import register_all_modules

    from ..export import load_image

    load_image(path)  # a missing or undecodable file is named before the pipeline runs
    register_all_modules(init_default_scope=True)
    packed = Compose(cfg.test_dataloader.dataset.pipeline)(dict(img_path=str(path)))
    return packed['inputs'].numpy().transpose(1, 2, 0)


def check_batches(size: int, second_size: int, image: Optional[np.ndarray] = None) -> list:
    """The batches the export is checked on: :data:`CHECK_BATCH` generated images at the
    export size, one at ``second_size`` (the graph's height and width are dynamic) and
    ``image`` (a real one, as the test pipeline crops it) if given."""
    batches = [np.stack([synthetic_image((size, size), seed=i) for i in range(CHECK_BATCH)]),
               synthetic_image((second_size, second_size + 3), seed=CHECK_BATCH)[None]]
    if image is not None:
        batches.append(image[None])
    return batches
