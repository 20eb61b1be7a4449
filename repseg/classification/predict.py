"""Classify images, folders (recursively) and videos: the library of ``tools/classify.py``.

The weights are any source :func:`repseg.load_checkpoint` reads (the authors'
``RepVGG-B2-train.pth``, timm, mmpretrain, repseg, ``tools/train.py`` classification
checkpoints; train-time or fused; files, URLs, hub names). The arch is the one given or,
without one, the arch whose stage depths and widths the weights have; the classifier is
built for it (the class count from the weights), loaded strictly and fused before it runs.
Every image goes through the evaluation preprocessing of the published top-1 numbers
(decoded and resized in PIL, mmpretrain's ``ResizeEdge`` + ``CenterCrop``: 256 -> 224,
D2se 320 -> 320), ImageNet mean/std. Class names: the checkpoint's own
(``meta.dataset_meta.classes`` of a ``tools/train.py`` checkpoint), else for 1000 classes
ImageNet's, read from torchvision's weight metadata (installed, no download).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from mmengine.logging import print_log
from PIL import Image

from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..checkpoint.loader import load_checkpoint_file
from ..errors import InvalidArgumentError
from ..fileio import check_output_location, write_text_atomically
from ..inference import check_device, half_precision_dtype, prepare_for_inference
from ..models.arch import canonical_arch_name
from ..models.repvgg import create_model
from ..segment import (UNREADABLE_IMAGE, UNREADABLE_VIDEO, InputError, Summary,
                       collect_sources)
from .model import checkpoint_arch, checkpoint_classes, is_fused_state, read_classifier_state

#: ``(resize, crop)`` of the evaluation preprocessing per arch (REFERENCES section 7).
EVAL_SIZES = {'D2se': (320, 320)}
DEFAULT_EVAL_SIZE = (256, 224)
#: Crop over resize for another input size (timm's ``crop_pct``; 224 / 256).
CROP_PCT = 0.875
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
BATCH = 16


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (torchvision's weight metadata)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta['categories'])


@dataclass
class Classifier:
    """A loaded, fused classifier and how to feed it."""

    model: torch.nn.Module
    arch: str
    arch_source: str
    class_names: list
    resize: int
    crop: int
    device: torch.device
    load_summary: str = ''

    def transform(self, rgb: np.ndarray) -> torch.Tensor:
        """mmpretrain's ``ResizeEdge`` (PIL bilinear) + ``CenterCrop`` and the ImageNet
        normalization of one ``H x W x 3`` RGB uint8 image, as a CHW float tensor."""
        from mmpretrain.datasets.transforms import ResizeEdge
        from mmcv.transforms import CenterCrop

        item = dict(img=rgb)
        item = ResizeEdge(self.resize, edge='short', backend='pillow',
                          interpolation='bilinear')(item)
        item = CenterCrop(crop_size=self.crop)(item)
        x = torch.from_numpy(np.ascontiguousarray(item['img'])).permute(2, 0, 1).float()
        return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)

    @torch.no_grad()
    def probabilities(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        return torch.softmax(self.model(batch).float(), dim=1).cpu()


def _checkpoint_classes_meta(obj) -> Optional[list]:
    meta = obj.get('meta') if isinstance(obj, Mapping) else None
    dataset_meta = meta.get('dataset_meta') if isinstance(meta, Mapping) else None
    classes = dataset_meta.get('classes') if isinstance(dataset_meta, Mapping) else None
    return list(classes) if classes else None


def load_classifier(weights: Union[str, os.PathLike, Mapping], arch: Optional[str] = None,
                    device: Optional[str] = None, fp16: bool = False, bf16: bool = False,
                    fuse: bool = True, input_size: Optional[int] = None) -> Classifier:
    """Build and load the classifier of ``weights`` (see the module docstring);
    ``input_size`` C crops C x C after resizing the shorter side to C / 0.875 (default:
    the arch's evaluation size)."""
    half_dtype = half_precision_dtype(fp16, bf16)
    device = check_device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    obj = weights if isinstance(weights, Mapping) else load_checkpoint_file(
        resolve_checkpoint(weights), 'weights')
    state, _ = read_classifier_state(obj)
    name = 'the given state dict' if isinstance(weights, Mapping) else f"'{weights}'"
    num_classes = checkpoint_classes(state, name)
    if num_classes is None:
        raise InvalidArgumentError(
            f'{name} holds no classifier (no linear layer: a segmentation backbone?); '
            'classify needs classification weights such as RepVGG-B2-train.pth or '
            'timm/repvgg_b2.rvgg_in1k')
    if arch is not None:
        arch, arch_source = canonical_arch_name(arch), '--arch'
    else:
        arch, arch_source = checkpoint_arch(state, name), 'guessed from the weights'
        if arch is None:
            raise InvalidArgumentError(f'{name}: its weights fit no RepVGG arch; give one with '
                                       '--arch (e.g. --arch B2)')
    model = create_model(arch, num_classes=num_classes, deploy=is_fused_state(state))
    report = load_checkpoint(model, state, strict=True)
    prepare_for_inference(model, fuse=fuse, fp16=half_dtype is not None,
                          half_dtype=half_dtype or torch.float16)
    names = _checkpoint_classes_meta(obj)
    if names is None or len(names) != num_classes:
        names = (imagenet_class_names() if num_classes == 1000
                 else [f'class {i}' for i in range(num_classes)])
    resize, crop = EVAL_SIZES.get(arch, DEFAULT_EVAL_SIZE)
    if input_size is not None:
        resize, crop = int(input_size / CROP_PCT), input_size
    print_log(f'RepVGG-{arch} ({arch_source}), {num_classes} classes, '
              f"{'fused' if fuse else 'train-time branches'}; {report.summary()}",
              logger='current')
    return Classifier(model.to(device), arch, arch_source, names, resize, crop, device,
                      report.summary())


@dataclass
class Prediction:
    """The top-k classes of one image (or video frame)."""

    image: str
    topk: list = field(default_factory=list)  # [{'index', 'name', 'prob'}]

    def lines(self) -> str:
        rows = [f"  {t['index']:>4}  {t['name']}  {t['prob']:.4f}" for t in self.topk]
        return '\n'.join([self.image, *rows])


def _read_rgb(path) -> Optional[np.ndarray]:
    """The image as RGB uint8 (grayscale, CMYK, palette and alpha converted), or None."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _frames(path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        while capture.isOpened():
            ok, frame = capture.read()
            if not ok:
                break
            yield frame[..., ::-1]
    finally:
        capture.release()


def _say(line: str) -> None:
    print(line, flush=True)  # at once, between the predictions printed so far


def _items(sources, summary: Summary) -> Iterator[tuple[str, np.ndarray]]:
    for source in sources:
        if source.is_video:
            count = 0
            for count, frame in enumerate(_frames(source.path), 1):
                summary.frames += 1
                yield f'{source.path}#{count - 1}', frame
            if not count:
                summary.skip(source.path, UNREADABLE_VIDEO, _say)
            continue
        rgb = _read_rgb(source.path)
        if rgb is None:
            summary.skip(source.path, UNREADABLE_IMAGE, _say)
            continue
        summary.images += 1
        yield str(source.path), rgb


def _batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def classify(weights, inputs: Sequence, arch: Optional[str] = None, topk: int = 5,
             device: Optional[str] = None, fp16: bool = False, bf16: bool = False,
             fuse: bool = True, json_out=None, show: bool = True,
             input_size: Optional[int] = None) -> list[Prediction]:
    """Classify ``inputs`` (image files, folders searched recursively, videos frame by
    frame) with ``weights``; return one :class:`Prediction` per image or frame.

    Args:
        weights: any weight source :func:`repseg.load_checkpoint` reads, or a state dict.
        arch: the RepVGG arch; None guesses it from the weights (logged either way).
        topk: classes per image, 1 to the class count.
        device, fp16, bf16: where and in what precision the model runs.
        fuse: fuse the RepVGG blocks first (the same predictions, faster).
        json_out: also write ``[{"image", "topk": [{"index", "name", "prob"}]}]`` here.
        show: print each prediction as ``index  name  probability`` lines.
        input_size: crop size (see :func:`load_classifier`); None: the arch's own.

    Unreadable files are skipped with one line each; :class:`InputError` if none could
    be read.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise InvalidArgumentError(f'topk must be a whole number >= 1, got {topk!r}')
    if json_out is not None:
        check_output_location(json_out, is_folder=False, what='--json')
    sources = collect_sources(inputs, '.')
    classifier = load_classifier(weights, arch, device, fp16, bf16, fuse, input_size)
    classes = len(classifier.class_names)
    if topk > classes:
        raise InvalidArgumentError(f'topk {topk} is more than the {classes} classes of the '
                                   f'model; choose 1 to {classes}')
    summary, predictions = Summary(), []
    start = time.perf_counter()
    for batch in _batched(_items(sources, summary), BATCH):
        probs = classifier.probabilities([image for _, image in batch])
        values, indices = probs.topk(topk, dim=1)
        for (path, _), row_p, row_i in zip(batch, values, indices):
            prediction = Prediction(path, [dict(index=int(i), name=classifier.class_names[i],
                                                prob=round(float(p), 6))
                                           for p, i in zip(row_p, row_i)])
            predictions.append(prediction)
            if show:
                print(prediction.lines(), flush=True)
    summary.seconds = time.perf_counter() - start
    print_log(summary.line(), logger='current')
    if not predictions:
        raise InputError(f"none of the inputs could be read ({len(summary.skipped)} skipped)")
    if json_out is not None:
        write_text_atomically(json_out, json.dumps(
            [dict(image=p.image, topk=p.topk) for p in predictions], indent=1) + '\n')
        print_log(f'predictions written to {json_out}', logger='current')
    return predictions
