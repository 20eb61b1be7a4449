"""Turn a Cityscapes download into what training reads.

Training reads ``*_gtFine_labelTrainIds.png``, which the official zips do not
contain. :func:`prepare_cityscapes` checks the folder layout first, naming
every missing piece, then builds the trainId labels: from the official
``*_gtFine_polygons.json`` with cityscapesscripts' own rasteriser, or, when
only ``*_gtFine_labelIds.png`` is present, by mapping labelIds through the
official table. Finally it writes the split lists ``train.txt``/``val.txt``.
"""
import functools
import logging
from multiprocessing import Pool
from pathlib import Path

import cv2
from mmengine.logging import print_log
from tqdm import tqdm

from . import cityscapes_layout as layout
from .validate import DatasetError, bullet_list


def find_frames(root):
    """Check the layout of a Cityscapes root and pair images with labels.

    Returns:
        dict: split name -> sorted list of ``(stem, label_source, output)``,
        where ``stem`` is ``<city>/<basename>`` without suffix,
        ``label_source`` the polygons JSON (preferred) or labelIds PNG and
        ``output`` the labelTrainIds PNG to write. Only present splits.

    Raises:
        DatasetError: naming what is missing and what was expected there.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"Cityscapes root '{root}' does not exist; expected a folder "
            f'holding {layout.IMG_ROOT}/ and {layout.ANN_ROOT}/ (unzip '
            'leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there, '
            'see data/README.md)')
    for sub, archive in ((layout.IMG_ROOT, 'leftImg8bit_trainvaltest.zip'),
                         (layout.ANN_ROOT, 'gtFine_trainvaltest.zip')):
        if not (root / sub).is_dir():
            raise DatasetError(
                f"folder '{root / sub}' is missing; expected {sub}/train and "
                f'{sub}/val from {archive} unzipped into {root}')
    splits = [s for s in layout.SPLITS if (root / layout.img_dir(s)).is_dir()]
    if not splits:
        folders = ' nor '.join(f"'{root / layout.img_dir(s)}'"
                               for s in layout.SPLITS)
        raise DatasetError(f'neither {folders} exists; expected one '
                           'sub-folder per city below each')
    for split in layout.SPLITS:
        if split not in splits:
            print_log(f"split folder '{root / layout.img_dir(split)}' is "
                      f'missing: preparing {", ".join(splits)} only',
                      logger='current', level=logging.WARNING)
    return {split: _split_frames(root, split) for split in splits}


def _split_frames(root, split):
    img_dir = root / layout.img_dir(split)
    ann_dir = root / layout.ann_dir(split)
    if not ann_dir.is_dir():
        raise DatasetError(
            f"label folder '{ann_dir}' is missing; expected the labels of "
            f"the images in '{img_dir}' there (from gtFine_trainvaltest.zip)")
    images = sorted(img_dir.rglob('*' + layout.IMG_SUFFIX))
    if not images:
        raise DatasetError(f"no images '*{layout.IMG_SUFFIX}' found under "
                           f"'{img_dir}'")
    frames, missing = [], []
    for img in images:
        stem = img.relative_to(img_dir).as_posix()[:-len(layout.IMG_SUFFIX)]
        polygons = ann_dir / (stem + layout.POLYGON_SUFFIX)
        label_ids = ann_dir / (stem + layout.LABEL_ID_SUFFIX)
        source = next((p for p in (polygons, label_ids) if p.is_file()), None)
        if source is None:
            missing.append(f"image '{img}' expects '{polygons}' or "
                           f"'{label_ids.name}' beside it")
        else:
            frames.append((stem, source,
                           ann_dir / (stem + layout.TRAIN_ID_SUFFIX)))
    if missing:
        raise DatasetError(
            f'{len(missing)} of {len(images)} {split} images have no label '
            'source:\n' + bullet_list(missing))
    return frames


def convert_label(source, output):
    """Write the trainId PNG ``output`` from a polygons JSON or a labelIds
    PNG ``source``; labels without a trainId become 255."""
    source, output = str(source), str(output)
    if source.endswith(layout.POLYGON_SUFFIX):
        from cityscapesscripts.preparation.json2labelImg import json2labelImg
        try:
            json2labelImg(source, output, 'trainIds')
        except SystemExit:  # cityscapesscripts exits on unknown labels
            raise DatasetError(f"'{source}' holds a label unknown to "
                               'cityscapesscripts') from None
        return
    label_ids = cv2.imread(source, cv2.IMREAD_UNCHANGED)
    if label_ids is None or label_ids.ndim != 2 or label_ids.dtype != 'uint8':
        raise DatasetError(f"'{source}' is not a readable single-channel "
                           '8-bit labelIds PNG')
    if not cv2.imwrite(output, _lut()[label_ids]):
        raise DatasetError(f"could not write '{output}'")


@functools.cache
def _lut():
    return layout.label_id_to_train_id_lut()


def _convert(frame):
    convert_label(*frame[1:])


def prepare_cityscapes(root, nproc=1):
    """Check a Cityscapes root, build its trainId labels and split lists.

    Args:
        root (str | Path): folder holding ``leftImg8bit/`` and ``gtFine/``.
        nproc (int): worker processes for the conversion.

    Returns:
        dict: split name -> number of frames prepared.
    """
    root = Path(root)
    frames = find_frames(root)
    for split, items in frames.items():
        kinds = {'polygons' if src.name.endswith(layout.POLYGON_SUFFIX)
                 else 'labelIds' for _, src, _ in items}
        print_log(f'{split}: {len(items)} frames, building labelTrainIds '
                  f"from {' and '.join(sorted(kinds))}", logger='current')
    tasks = [frame for items in frames.values() for frame in items]
    with tqdm(total=len(tasks), desc='labelTrainIds', unit='img') as bar:
        if nproc > 1:
            with Pool(nproc) as pool:
                for _ in pool.imap_unordered(_convert, tasks, chunksize=8):
                    bar.update()
        else:
            for task in tasks:
                _convert(task)
                bar.update()
    for split, items in frames.items():
        split_file = root / f'{split}.txt'
        split_file.write_text(''.join(stem + '\n' for stem, _, _ in items))
        print_log(f'wrote {split_file} ({len(items)} frames)',
                  logger='current')
    return {split: len(items) for split, items in frames.items()}
