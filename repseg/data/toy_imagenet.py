"""A small synthetic image-classification set in both ImageNet layouts.

The toy set lets classification (training, evaluation, fusion, prediction) run in
seconds on a CPU without the 150 GB ImageNet download. Each of its ten classes is a
shape or a texture (disc, square, triangle, ring, cross, three stripe directions,
checkerboard, dots) drawn with OpenCV in random colours, size and position over a
grained, tinted background, so colour tells nothing (only the brightness contrast is kept) and a small CNN learns the class
from form alone.

The files follow both val layouts users hold: class folders (``train/<class>/*.JPEG``,
``val/<class>/*.JPEG``, torchvision's ``ImageFolder``, the RepVGG authors' and timm's)
and mmpretrain's annotation lists ``meta/train.txt`` / ``meta/val.txt`` (``<class>/<file>
<label>`` per line, relative to the split folder). Class ``i`` is the ``i``-th folder in
sorted order, as ImageNet's class index is the ``i``-th WordNet id. Every image has its
own generator seeded by ``(seed, split, class, index)``: the same seed gives the same
bytes, and an image does not depend on how many others are drawn.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from mmengine.logging import print_log

from ..errors import InvalidArgumentError
from ..fileio import check_output_location, claim_outputs

#: Class folder names in index order (sorted, so ``ImageFolder`` gives the same indices).
CLASSES = ('c0_disc', 'c1_square', 'c2_triangle', 'c3_ring', 'c4_cross',
           'c5_hstripes', 'c6_vstripes', 'c7_dstripes', 'c8_checker', 'c9_dots')
SPLITS = ('train', 'val')
SUFFIX = '.JPEG'
JPEG_QUALITY = 92
LUMA = np.array([0.299, 0.587, 0.114])


def _colours(rng) -> tuple[np.ndarray, np.ndarray]:
    """A background and a foreground colour whose brightness differs by at least 90."""
    while True:
        bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if abs(float((bg - fg) @ LUMA)) >= 90:
            return bg, fg


def _stripes(h, w, angle, period, phase):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    return ((t + phase) % period) < period / 2


def _shape_mask(index: int, rng, size: int) -> np.ndarray:
    """The foreground of class ``index`` as a boolean ``size`` x ``size`` mask."""
    mask = np.zeros((size, size), np.uint8)
    r = size * rng.uniform(0.28, 0.4)
    cx, cy = (size / 2 + rng.uniform(-0.08, 0.08, 2) * size)
    centre = (int(round(cx)), int(round(cy)))
    name = CLASSES[index].split('_', 1)[1]
    if name == 'disc':
        cv2.circle(mask, centre, int(r), 1, -1, cv2.LINE_AA)
    elif name == 'ring':
        cv2.circle(mask, centre, int(r), 1, max(2, int(r * 0.3)), cv2.LINE_AA)
    elif name in ('square', 'triangle'):
        sides = 4 if name == 'square' else 3
        turn = rng.uniform(-0.25, 0.25) + (np.pi / 4 if sides == 4 else -np.pi / 2)
        angles = turn + 2 * np.pi * np.arange(sides) / sides
        points = np.stack([cx + r * 1.2 * np.cos(angles), cy + r * 1.2 * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1, cv2.LINE_AA)
    elif name == 'cross':
        arm = max(2, int(r * 0.35))
        cv2.rectangle(mask, (centre[0] - int(r), centre[1] - arm // 2),
                      (centre[0] + int(r), centre[1] + arm // 2), 1, -1)
        cv2.rectangle(mask, (centre[0] - arm // 2, centre[1] - int(r)),
                      (centre[0] + arm // 2, centre[1] + int(r)), 1, -1)
    elif name.endswith('stripes'):
        base = {'hstripes': np.pi / 2, 'vstripes': 0.0, 'dstripes': np.pi / 4}[name]
        angle = base + rng.uniform(-0.15, 0.15) + (np.pi / 2 * rng.integers(2)
                                                   if name == 'dstripes' else 0)
        return _stripes(size, size, angle, size * rng.uniform(0.12, 0.22), rng.uniform(0, 20))
    elif name == 'checker':
        period = size * rng.uniform(0.15, 0.25)
        phase = rng.uniform(0, period, 2)
        return (_stripes(size, size, 0.0, period, phase[0])
                ^ _stripes(size, size, np.pi / 2, period, phase[1]))
    elif name == 'dots':
        step = size * rng.uniform(0.16, 0.24)
        offset = rng.uniform(0, step, 2)
        for y in np.arange(offset[1], size, step):
            for x in np.arange(offset[0], size, step):
                cv2.circle(mask, (int(x), int(y)), max(1, int(step * 0.25)), 1, -1)
    return mask.astype(bool)


def draw_image(index: int, rng, size: int = 80) -> np.ndarray:
    """One ``size`` x ``size`` RGB uint8 image of class ``index`` (see :data:`CLASSES`)."""
    bg, fg = _colours(rng)
    mask = _shape_mask(index, rng, size)
    rgb = np.where(mask[..., None], fg, bg).astype(np.float32)
    blotch = cv2.resize(rng.normal(0, 10, (4, 4, 3)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    rgb += blotch + rng.normal(0, 5, (size, size, 3))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def image_name(split: str, index: int, number: int) -> str:
    """``<class>/<class>_<split>_<number>.JPEG``, relative to the split folder."""
    cls = CLASSES[index]
    return f'{cls}/{cls}_{split}_{number:04d}{SUFFIX}'


def toy_imagenet_files(out_dir, num_train: int = 60, num_val: int = 20) -> list[Path]:
    """Every file :func:`make_toy_imagenet` writes under ``out_dir``."""
    out_dir = Path(out_dir)
    files = []
    for split, num in zip(SPLITS, (num_train, num_val)):
        files += [out_dir / split / image_name(split, c, n)
                  for c in range(len(CLASSES)) for n in range(num)]
        files.append(out_dir / 'meta' / f'{split}.txt')
    return files


def make_toy_imagenet(out_dir, num_train: int = 60, num_val: int = 20, size: int = 80,
                      seed: int = 0, force: bool = False) -> dict:
    """Write the toy set under ``out_dir``: ``train/`` and ``val/`` class folders of
    JPEGs and the lists ``meta/train.txt``, ``meta/val.txt``.

    Args:
        out_dir: data root to write into (created if needed).
        num_train, num_val: images per class in each split.
        size: image side in pixels (square images).
        seed: the same seed writes identical bytes.
        force: replace the files of an earlier toy set in ``out_dir``
            (:func:`repseg.fileio.claim_outputs`); without it they are refused.

    Returns:
        ``{'train': n, 'val': n}``: images written per split.
    """
    if size < 32:
        raise InvalidArgumentError(f'toy ImageNet images must be at least 32x32, got {size}')
    if min(num_train, num_val) < 1:
        raise InvalidArgumentError('toy ImageNet needs at least one image per class in each '
                                   f'split, got {num_train} train and {num_val} val')
    out_dir = check_output_location(out_dir, is_folder=True, what='toy ImageNet root')
    claim_outputs(toy_imagenet_files(out_dir, num_train, num_val), force, 'another folder')
    written = {}
    for split_index, (split, num) in enumerate(zip(SPLITS, (num_train, num_val))):
        lines = []
        for cls in range(len(CLASSES)):
            (out_dir / split / CLASSES[cls]).mkdir(parents=True, exist_ok=True)
            for number in range(num):
                rng = np.random.default_rng([seed, split_index, cls, number])
                name = image_name(split, cls, number)
                bgr = draw_image(cls, rng, size)[..., ::-1]
                if not cv2.imwrite(str(out_dir / split / name), np.ascontiguousarray(bgr),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                    raise OSError(f'could not write {out_dir / split / name}')
                lines.append(f'{name} {cls}\n')
        (out_dir / 'meta').mkdir(exist_ok=True)
        (out_dir / 'meta' / f'{split}.txt').write_text(''.join(lines))
        written[split] = len(lines)
        print_log(f'toy ImageNet: {len(lines)} {split} images of {size}x{size} in '
                  f'{len(CLASSES)} class folders under {out_dir / split}', logger='current')
    return written
