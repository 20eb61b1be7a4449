"""Dataset checks run before training starts.

A wrong data root or a missing ``labelTrainIds`` file otherwise surfaces
minutes later as a shape error deep in a data loader worker, or never: labels
holding labelIds instead of trainIds train silently into a useless model.
These checks fail at once with a message that names the file and says what
was expected.
"""
import os
import tempfile
from pathlib import Path

from . import cityscapes_layout as layout
from ..errors import UserError
from .frame_check import FrameRules, cache_file, check_frames

_HOW_TO_GET_DATA = (
    'Download Cityscapes and run `python tools/prepare_cityscapes.py '
    '{root}` on it (see data/README.md); or, for a quick run, draw the '
    'synthetic toy city with `python tools/make_toy_cityscapes.py data/toy_city` and '
    'set data_root to data/toy_city, or train the small demo model on it: '
    '`python tools/train.py configs/demo/pspnet_repvgg_a0_toycity.py` (as `make demo` does).')


class DatasetError(UserError, ValueError):
    """The dataset on disk is not what training expects."""


def bullet_list(lines, shown=5):
    """Indent ``lines`` one per line, the first ``shown`` then a count."""
    more = [f'... and {len(lines) - shown} more'] if len(lines) > shown else []
    return '\n'.join('  ' + line for line in list(lines[:shown]) + more)


def check_cityscapes_split(data_root, img_dir='leftImg8bit/train',
                           ann_dir='gtFine/train',
                           img_suffix=layout.IMG_SUFFIX,
                           seg_suffix=layout.TRAIN_ID_SUFFIX,
                           num_classes=layout.NUM_CLASSES,
                           ignore_index=layout.IGNORE_INDEX, max_files=None,
                           progress=True, color_type='color', cache_dir=None,
                           workers=None):
    """Check one split of a Cityscapes-style dataset.

    Every image must have its label (checked for all files); the first
    ``max_files`` pairs are also decoded (:mod:`repseg.data.frame_check`:
    both PNGs readable, image 3-channel, label 8-bit single-channel of the
    image's size holding only trainIds ``0..num_classes-1`` and
    ``ignore_index``). All bad pairs are reported together.

    Args:
        data_root (str | Path): dataset root, as ``data_root`` in configs.
        img_dir, ann_dir (str): image and label folders below the root, as
            ``data_prefix.img_path`` and ``data_prefix.seg_map_path``.
        img_suffix, seg_suffix (str): file name endings of images and labels.
        num_classes (int): labels must lie in ``0..num_classes-1`` ...
        ignore_index (int): ... or equal this value.
        max_files (int | None): decode only the first pairs (sorted by
            name); ``None`` decodes all, 0 none.
        progress (bool): show a progress bar while decoding.
        color_type (str): the ``color_type`` of the pipeline's
            ``LoadImageFromFile``.
        cache_dir (str | Path | None): remember passed pairs there
            (:func:`repseg.data.frame_check.cache_file`) and decode only new
            or changed pairs next time; None: no cache.
        workers (int | None): decoding processes (None: up to the CPUs).

    Returns:
        int: the number of image/label pairs.

    Raises:
        DatasetError: naming the file or folder and what was expected.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetError(f"data root '{root}' does not exist. " +
                           _HOW_TO_GET_DATA.format(root=root))
    img_path, ann_path = root / img_dir, root / ann_dir
    for folder, what in ((img_path, f'images *{img_suffix}'),
                         (ann_path, f'labels *{seg_suffix}')):
        if not folder.is_dir():
            raise DatasetError(
                f"folder '{folder}' does not exist; expected {what} below "
                "it, one sub-folder per city. " +
                _HOW_TO_GET_DATA.format(root=root))
    images = sorted(img_path.rglob('*' + img_suffix))
    if not images:
        raise DatasetError(f"no images '*{img_suffix}' found under "
                           f"'{img_path}'")
    pairs = [(img, _label_path(img, img_path, ann_path, img_suffix,
                               seg_suffix)) for img in images]
    _check_labels_exist(pairs, root, seg_suffix)
    checked = pairs if max_files is None else pairs[:max_files]
    if checked:
        rules = FrameRules(num_classes, ignore_index, color_type)
        cache = None if cache_dir is None else cache_file(
            cache_dir, img_path, ann_path, (img_suffix, seg_suffix), rules)
        report = check_frames(checked, rules, cache, root=img_path,
                              workers=workers, progress=progress,
                              desc=f'checking {img_dir}')
        if report.problems:
            raise DatasetError(_bad_frames_message(report, img_path))
    return len(pairs)


def _bad_frames_message(report, img_path, shown=20):
    """Every bad pair, one line each (the first ``shown``, the rest in a file
    named in the message when there are more)."""
    problems = report.problems
    message = (f'{len(problems)} of {report.total} image/label pairs under '
               f"'{img_path}' cannot train:\n" +
               bullet_list(problems, shown=len(problems)
                           if len(problems) <= shown else shown))
    if len(problems) > shown:
        listing = Path(tempfile.gettempdir()) / (
            f'repseg_bad_frames_{os.getpid()}.txt')
        listing.write_text('\n'.join(problems) + '\n')
        message += f'\n(all {len(problems)} listed in {listing})'
    return message


def _label_path(img, img_path, ann_path, img_suffix, seg_suffix):
    rel = img.relative_to(img_path).as_posix()
    return ann_path / (rel[:-len(img_suffix)] + seg_suffix)


def _check_labels_exist(pairs, root, seg_suffix):
    missing = [(img, label) for img, label in pairs if not label.is_file()]
    if not missing:
        return
    lines = [f"image '{img}' expects label '{label}'"
             for img, label in missing]
    message = (f'{len(missing)} of {len(pairs)} images have no label:\n' +
               bullet_list(lines))
    img, label = missing[0]
    stem = label.name[:-len(seg_suffix)]
    sources = [label.with_name(stem + suffix) for suffix in
               (layout.POLYGON_SUFFIX, layout.LABEL_ID_SUFFIX)]
    found = [src for src in sources if src.is_file()]
    if found:
        message += (f"\n'{found[0]}' exists: the trainId labels have not "
                    'been built yet; run `python tools/prepare_cityscapes.py'
                    f' {root}`.')
    raise DatasetError(message)
