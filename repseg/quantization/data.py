"""Images for calibrating and checking an INT8 model, read as the model is tested.

Calibration must see what the deployed model sees, so every image goes through the
config's own test pipeline (its resize, if any): the config's val split (``--calib val``:
its test dataloader's dataset, with labels) or a folder of images (searched recursively,
no labels). An item is what the pipeline packs, ``dict(inputs=3 x H x W uint8 tensor,
data_samples=SegDataSample)``; the graph takes it as a ``1 x 3 x H x W`` float32 batch of
pixel values (normalisation is inside the exported graph).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from onnxruntime.quantization import CalibrationDataReader

from ..errors import UserError

#: ``--calib`` value naming the config's val split (its test dataloader's dataset).
VAL_SPLIT = 'val'
PathLike = Union[str, os.PathLike]


class CalibrationDataError(UserError, ValueError):
    """Calibration or check images that cannot be used."""


class FolderImages(Sequence):
    """Images of a folder (recursive, sorted), each through the config's test pipeline."""

    def __init__(self, cfg: Config, paths: Sequence[Path]):
        from ..segment import image_pipeline

        self.paths = list(paths)
        self.pipeline = image_pipeline(cfg)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        path = self.paths[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibrationDataError(f'{path}: not a readable image (corrupt, truncated or '
                                       'of an unknown type); remove it from the folder')
        item = self.pipeline(dict(img=image, img_path=str(path)))
        return item


class Subset(Sequence):
    """Items ``start:stop`` of a sequence, read lazily (datasets load files on access)."""

    def __init__(self, items: Sequence, start: int = 0, stop: Optional[int] = None):
        self.items, self.start = items, start
        self.stop = len(items) if stop is None else min(stop, len(items))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.items[self.start + index]


def folder_images(cfg: Config, folder: PathLike) -> FolderImages:
    """The images below ``folder``, read through ``cfg``'s test pipeline."""
    from ..segment import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationDataError(
            f"--calib {folder}: not a folder; give a folder of images or '{VAL_SPLIT}' for "
            "the config's val split")
    paths = sorted(p for p in folder.rglob('*')
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationDataError(f'--calib {folder}: no images found (types: '
                                   f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return FolderImages(cfg, paths)


def val_split_problems(cfg: Config, config_name: str) -> list[str]:
    """Why the config's val split cannot be read (empty when it can): the same checks as
    ``tools/test.py`` runs before testing."""
    from ..mmseg.preflight import dataset_problems

    if not (cfg.get('test_dataloader') or {}).get('dataset'):
        return [f'{config_name} has no test_dataloader.dataset']
    return dataset_problems(cfg, ['test_dataloader'], config_name)


def val_split(cfg: Config):
    """The config's val split (test dataloader's dataset) with labels, as tested."""
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return DATASETS.build(cfg.test_dataloader.dataset)


def image_batch(item, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """The ``1 x 3 x H x W`` float32 input of the exported graph for one packed item,
    resized (bilinear) to ``shape=(H, W)`` for a graph with a fixed size."""
    image = item['inputs'].float()[None]
    if shape is not None and tuple(image.shape[-2:]) != tuple(shape):
        image = F.interpolate(image, size=tuple(shape), mode='bilinear', align_corners=False)
    return image.numpy()


class ImageReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over packed items (one image per batch)."""

    def __init__(self, items: Sequence, input_name: str = 'image',
                 shape: Optional[Sequence[int]] = None):
        self.items, self.input_name, self.shape = items, input_name, shape
        self.rewind()

    def rewind(self) -> None:
        self._iterator: Iterator = iter(range(len(self.items)))

    def get_next(self) -> Optional[dict]:
        index = next(self._iterator, None)
        if index is None:
            return None
        return {self.input_name: image_batch(self.items[index], self.shape)}

    def __len__(self) -> int:
        return len(self.items)


def first_shape(items: Sequence) -> tuple[int, int]:
    """``(H, W)`` of the first packed item."""
    inputs = items[0]['inputs']
    if not torch.is_tensor(inputs) or inputs.dim() != 3:
        raise CalibrationDataError('the test pipeline must pack a 3 x H x W image tensor '
                                   f"('inputs'), got {type(inputs).__name__}")
    return tuple(inputs.shape[-2:])
