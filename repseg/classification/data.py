"""Pre-flight checks of classification datasets, in both layouts users hold.

mmpretrain's ``CustomDataset`` / ``ImageNet`` read class folders (``val/<class>/*``; the
class index is the folder's position in sorted order) or an annotation list
(``meta/val.txt``: ``path label`` per line, relative to the split folder). What goes
wrong with them goes wrong late or silently: an empty class folder only logs a warning
(top-1 is then over fewer classes), a folder count that does not match the head is an
``AssertionError`` or a CUDA device assert in the loss, a corrupt JPEG stops a worker
hours in. These checks run before the Runner is built and name the folder, file or key;
every image is decoded once and remembered (:func:`repseg.data.frame_check.check_frames`,
cached by size and mtime).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from mmengine.config import Config

from ..data.frame_check import FrameRules, cache_file, check_frames, default_cache_dir
from ..errors import first_few
from ..mmseg.frame_guard import leaf_datasets

#: Class folders of mmpretrain's ``ImageNet`` type (its IMAGENET_CATEGORIES).
IMAGENET_CLASSES = 1000
#: mmpretrain's ``CustomDataset`` default extensions (matched case-insensitively).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif')
#: Files or folders named in a problem; the rest are counted.
SHOWN = 5
LAYOUT_HELP = ('A split is either class folders (<data_root>/<split>/<class>/*.JPEG, class '
               'index = position of the folder in sorted order) or an annotation list '
               "(ann_file='meta/<split>.txt', lines 'relative/path label')")


def _shown(items: Sequence) -> str:
    return first_few(items, SHOWN)


def _img_dir(dataset: Mapping) -> Path:
    prefix = dataset.get('data_prefix') or ''
    if isinstance(prefix, Mapping):
        prefix = prefix.get('img_path', '')
    return Path(dataset.get('data_root') or '') / prefix


def _is_image(path: Path, extensions: Sequence[str]) -> bool:
    return path.is_file() and path.suffix.lower() in extensions


def _folder_samples(img_dir: Path, extensions, path: str,
                    num_classes: Optional[int]) -> tuple[list, list[str]]:
    classes = sorted(p.name for p in img_dir.iterdir() if p.is_dir())
    if not classes:
        return [], [f"{path}: '{img_dir}' has no class folders (and the dataset has no "
                    f'ann_file). {LAYOUT_HELP}']
    problems, images = [], []
    empty = []
    for name in classes:
        found = sorted(p for p in (img_dir / name).rglob('*') if _is_image(p, extensions))
        if not found:
            empty.append(name)
        images += found
    if empty:
        problems.append(
            f"{path}: {len(empty)} class folder(s) under '{img_dir}' hold no images "
            f"({', '.join(extensions)}): {_shown(empty)}. Every class folder must hold "
            'images (an incomplete copy or extraction?); the class indices come from the '
            'sorted folder names, so a folder cannot simply be removed')
    if num_classes is not None and len(classes) != num_classes:
        problems.append(
            f"{path}: '{img_dir}' has {len(classes)} class folders ({_shown(classes)}) but "
            f'the head has {num_classes} classes (model.head.num_classes). Point the '
            'dataset at the right split, or set the class count with --cfg-options '
            f'model.head.num_classes={len(classes)} '
            f'data_preprocessor.num_classes={len(classes)}')
    return images, problems


def _list_samples(img_dir: Path, ann: Path, extensions, path: str,
                  num_classes: Optional[int]) -> tuple[list, list[str]]:
    if not ann.is_file():
        return [], [f"{path}.ann_file: annotation list '{ann}' not found. {LAYOUT_HELP}; "
                    f"set {path}.ann_file='' to read class folders"]
    images, bad_lines, bad_labels, missing = [], [], [], []
    for number, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(' ', 1)
        if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
            bad_lines.append(f'line {number}: {line.strip()[:60]!r}')
            continue
        label = int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            bad_labels.append(f'line {number}: label {label}')
        image = img_dir / parts[0]
        if not image.is_file():
            missing.append(str(image))
        else:
            images.append(image)
    problems = []
    if bad_lines:
        problems.append(f"{path}.ann_file: '{ann}' has lines that are not 'relative/path "
                        f"label': {_shown(bad_lines)}")
    if bad_labels:
        problems.append(f"{path}.ann_file: '{ann}' has labels outside 0..{num_classes - 1} "
                        f'(model.head.num_classes={num_classes}): {_shown(bad_labels)}')
    if missing:
        problems.append(f"{path}.ann_file: {len(missing)} image(s) listed in '{ann}' do not "
                        f"exist below '{img_dir}': {_shown(missing)}")
    if not images and not problems:
        problems.append(f"{path}.ann_file: '{ann}' lists no images")
    return images, problems


def _imagenet_type_problem(dataset: Mapping, img_dir: Path, path: str,
                           where: str) -> Optional[str]:
    """mmpretrain's ``ImageNet`` type names the 1000 ImageNet classes and asserts as many
    class folders deep inside the Runner; say so before, with the type that reads any."""
    if dataset.get('type') != 'ImageNet' or dataset.get('classes') or dataset.get('ann_file'):
        return None
    count = sum(1 for p in img_dir.iterdir() if p.is_dir())
    if count in (0, IMAGENET_CLASSES):
        return None
    return (f"{where}: type 'ImageNet' (mmpretrain's) reads the {IMAGENET_CLASSES} ImageNet "
            f"class folders, and '{img_dir}' has {count}. For your own classes read them "
            f"with mmpretrain's CustomDataset (--cfg-options {path}.type=CustomDataset) or "
            'start from configs/classification/repvgg_finetune.py')


def dataset_problems(cfg: Config, loader_names: Sequence[str],
                     config_name: str = 'the config') -> list[str]:
    """Check the dataset of each dataloader: its folder, layout, classes against the
    head, and (unless ``skip_data_check``) that every image decodes to 3 channels."""
    head = (cfg.get('model') or {}).get('head') or {}
    num_classes = head.get('num_classes')
    decode = not cfg.get('skip_data_check', False)
    problems, seen = [], set()
    for loader_name in loader_names:
        loader = cfg.get(loader_name) or {}
        if not isinstance(loader.get('dataset'), Mapping):
            continue
        for path, dataset in leaf_datasets(loader['dataset'], f'{loader_name}.dataset'):
            img_dir = _img_dir(dataset)
            ann_file = dataset.get('ann_file') or ''
            key = (str(img_dir), ann_file)
            if key in seen:
                continue
            seen.add(key)
            where = f'{path} (in {config_name})'
            if not img_dir.is_dir():
                problems.append(f"{where}: image folder '{img_dir}' (data_root + data_prefix) "
                                f'does not exist. {LAYOUT_HELP}; set it with --cfg-options '
                                f'{path}.data_root=PATH')
                continue
            extensions = tuple(e.lower() for e in dataset.get('extensions', IMAGE_EXTENSIONS))
            if ann_file:
                ann = Path(ann_file)
                if not ann.is_absolute():
                    ann = Path(dataset.get('data_root') or '') / ann
                images, found = _list_samples(img_dir, ann, extensions, where, num_classes)
            else:
                images, found = _folder_samples(img_dir, extensions, where, num_classes)
                found += filter(None, [_imagenet_type_problem(dataset, img_dir, path, where)])
            problems += found
            if decode and images and not found and int(os.environ.get('LOCAL_RANK', '0')) == 0:
                rules = FrameRules(num_classes=num_classes or 0)
                cache = cache_file(default_cache_dir(), img_dir, '', extensions, rules)
                report = check_frames([(image, None) for image in images], rules, cache,
                                      root=img_dir, desc=f'checking {loader_name} images')
                if report.problems:
                    problems.append(f'{where}: {len(report.problems)} image(s) cannot be '
                                    f'used:\n  ' + '\n  '.join(report.problems[:20]))
    return problems
