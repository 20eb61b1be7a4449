"""Loaders that name the frame when one fails mid-run.

The pre-flight decodes every frame (:mod:`repseg.data.frame_check`), but a file can
still change or vanish during a run of hours, and the check can be skipped. mmseg's
loaders then fail with ``AssertionError: failed to load image`` in a worker, or not at
all: a label holding 50 becomes ``IndexError: Target 50 is out of bounds`` in the loss
(a device-side assert on a GPU), naming no file. :func:`guard_frame_loading` swaps the
two loaders of each pipeline for the subclasses below, which check the same conditions
as the pre-flight on each frame they load (a bincount of the label, ~1 ms) and raise
:class:`FrameLoadError` naming the file; :mod:`repseg.mmseg.runner` adds the iteration.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterator, Mapping, Optional

from mmcv.transforms import LoadImageFromFile
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS, TRANSFORMS

from ..data.frame_check import FrameRules, channels_problem, label_problem, size_problem
from ..errors import UserError

DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
#: The loaders swapped, by the type names a config may use for them.
IMAGE_LOADERS = ('LoadImageFromFile', 'mmcv.LoadImageFromFile')
LABEL_LOADERS = ('LoadAnnotations', 'mmseg.LoadAnnotations')


class FrameLoadError(UserError, RuntimeError):
    """A frame that cannot be loaded or trained on, found while a run reads it."""

    def __init__(self, message: str):
        # A DataLoader worker's error reaches the main process as
        # FrameLoadError('Caught FrameLoadError in DataLoader worker ... Original
        # Traceback ...: <message>'): keep the message, drop the traceback text.
        marker = f'{type(self).__name__}: '
        if 'Original Traceback' in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` raising :class:`FrameLoadError` (naming the file) for an
    image that cannot be read or lacks ``channels`` channels."""

    def __init__(self, *args, channels: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.channels = channels

    def transform(self, results: dict) -> Optional[dict]:
        path = results.get('img_path')
        try:
            loaded = super().transform(results)
        except Exception as error:  # mmcv raises AssertionError, OSError, ... here
            raise FrameLoadError(f"cannot read image '{path}' ({type(error).__name__}: "
                                 f'{error})') from error
        problem = loaded and channels_problem(loaded['img'], path, self.color_type,
                                              self.channels)
        if problem:
            raise FrameLoadError(problem)
        return loaded


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations`` raising :class:`FrameLoadError` (naming the file) for a
    label that cannot be read, does not match its image's size, or holds values outside
    ``0..num_classes-1`` and ``ignore_index`` (None: values not checked)."""

    def __init__(self, *args, num_classes: Optional[int] = None, ignore_index: int = 255,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.rules = None if num_classes is None else FrameRules(num_classes, ignore_index)

    def _load_seg_map(self, results: dict) -> None:
        path = results.get('seg_map_path')
        try:
            super()._load_seg_map(results)
        except Exception as error:  # a failed decode surfaces as AttributeError on None
            raise FrameLoadError(f"cannot read label '{path}' ({type(error).__name__}: "
                                 f'{error})') from error
        seg = results['gt_seg_map']
        size = results.get('ori_shape')
        problem = (self.rules and label_problem(seg, path, self.rules)) or \
            (size is not None and size_problem(results.get('img_path'), size, path, seg.shape))
        if problem:
            raise FrameLoadError(problem)


def default_argument(cls: type, name: str, fallback: Any) -> Any:
    """The default of constructor argument ``name`` along ``cls``'s MRO."""
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is not None:
            param = inspect.signature(init).parameters.get(name)
            if param is not None and param.default is not param.empty:
                return param.default
    return fallback


def _image_loader(pipeline) -> Mapping:
    names = (*IMAGE_LOADERS, CheckedLoadImageFromFile.__name__)
    return next((t for t in _transforms(pipeline) if t.get('type') in names), {})


def dataset_frame_rules(dataset: Mapping) -> Optional[FrameRules]:
    """What each frame of the dataset config ``dataset`` must satisfy: its classes
    (``metainfo.classes`` or the dataset class's), its ``ignore_index`` and the
    ``color_type`` of its pipeline's image loader. None if the classes are unknown."""
    cls = DATASETS.get(dataset.get('type', ''))
    if not isinstance(cls, type):
        return None
    classes = (dataset.get('metainfo') or {}).get('classes') or \
        getattr(cls, 'METAINFO', {}).get('classes')
    if not classes:
        return None
    ignore_index = dataset.get('ignore_index', default_argument(cls, 'ignore_index', 255))
    color_type = _image_loader(dataset.get('pipeline') or []).get('color_type', 'color')
    return FrameRules(len(classes), ignore_index, color_type)


def leaf_datasets(dataset: Mapping, path: str) -> Iterator[tuple[str, Mapping]]:
    """The datasets that read files, below RepeatDataset / ConcatDataset wrappers."""
    if 'datasets' in dataset:
        for index, item in enumerate(dataset['datasets']):
            yield from leaf_datasets(item, f'{path}.datasets.{index}')
    elif isinstance(dataset.get('dataset'), Mapping):
        yield from leaf_datasets(dataset['dataset'], f'{path}.dataset')
    else:
        yield path, dataset


def _transforms(pipeline) -> Iterator[dict]:
    """Every transform dict of a pipeline, including those nested in TestTimeAug."""
    for item in pipeline:
        if isinstance(item, (list, tuple)):
            yield from _transforms(item)
        elif isinstance(item, Mapping):
            yield item
            for value in item.values():
                if isinstance(value, (list, tuple)):
                    yield from _transforms(value)


def _guard_pipeline(pipeline, rules: Optional[FrameRules]) -> None:
    for transform in _transforms(pipeline):
        if transform.get('type') in IMAGE_LOADERS:
            transform['type'] = CheckedLoadImageFromFile.__name__
        elif transform.get('type') in LABEL_LOADERS and rules:
            transform.update(type=CheckedLoadAnnotations.__name__, num_classes=rules.num_classes,
                             ignore_index=rules.ignore_index)


def guard_frame_loading(cfg) -> None:
    """Swap mmcv/mmseg's image and label loaders for the checked ones in the pipelines
    of every dataloader (and ``tta_pipeline``, with the test data's rules), in place."""
    test_rules = None
    for loader in DATALOADERS:
        dataset = (cfg.get(loader) or {}).get('dataset')
        if not isinstance(dataset, Mapping):
            continue
        for _, leaf in leaf_datasets(dataset, loader):
            rules = dataset_frame_rules(leaf)
            _guard_pipeline(leaf.get('pipeline') or [], rules)
            if loader == 'test_dataloader':
                test_rules = rules
    if cfg.get('tta_pipeline'):
        _guard_pipeline(cfg.tta_pipeline, test_rules)
