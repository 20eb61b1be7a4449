"""The Cityscapes dataset layout, written once as data.

Everything else in :mod:`repseg` (the toy city, the preparation tool, the
dataset checks, the labelIds writer of ``tools/test.py --out``) reads its class
list, palette, label ids, file suffixes and folder names from here.

:data:`LABELS` is the Cityscapes label definition (``helpers/labels.py`` of
cityscapesscripts, the official source) written as data, so that nothing but
the evaluation needs cityscapesscripts at run time: GPU images and deployment
machines lack it. ``tests/test_prepare_cityscapes.py`` checks every field against
cityscapesscripts where it is installed.
"""
from typing import NamedTuple

import numpy as np

CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole',
           'traffic light', 'traffic sign', 'vegetation', 'terrain', 'sky',
           'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
           'bicycle')

PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
           (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
           (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
           (0, 0, 230), (119, 11, 32))

NUM_CLASSES = len(CLASSES)
IGNORE_INDEX = 255

SPLITS = ('train', 'val')
IMG_ROOT = 'leftImg8bit'
ANN_ROOT = 'gtFine'

IMG_SUFFIX = '_leftImg8bit.png'
TRAIN_ID_SUFFIX = '_gtFine_labelTrainIds.png'
LABEL_ID_SUFFIX = '_gtFine_labelIds.png'
INSTANCE_ID_SUFFIX = '_gtFine_instanceIds.png'
POLYGON_SUFFIX = '_gtFine_polygons.json'


def img_dir(split):
    """Image folder of ``split`` relative to the data root, e.g.
    ``leftImg8bit/train``; one sub-folder per city lies below it."""
    return f'{IMG_ROOT}/{split}'


def ann_dir(split):
    """Annotation folder of ``split`` relative to the data root, e.g.
    ``gtFine/train``."""
    return f'{ANN_ROOT}/{split}'


class Label(NamedTuple):
    """One Cityscapes label: the fields of cityscapesscripts' ``Label`` record.

    ``id`` is the value in ``*_gtFine_labelIds.png``; ``train_id`` the class index
    trained on (255: ignored; -1: not in the label images at all).
    """

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple


#: Every Cityscapes label, in labelId order (``license plate`` last, id -1).
LABELS = (
    #      name                    id  trainId category       catId inst   ignore color
    Label('unlabeled',             0, 255, 'void',         0, False, True, (0, 0, 0)),
    Label('ego vehicle',           1, 255, 'void',         0, False, True, (0, 0, 0)),
    Label('rectification border',  2, 255, 'void',         0, False, True, (0, 0, 0)),
    Label('out of roi',            3, 255, 'void',         0, False, True, (0, 0, 0)),
    Label('static',                4, 255, 'void',         0, False, True, (0, 0, 0)),
    Label('dynamic',               5, 255, 'void',         0, False, True, (111, 74, 0)),
    Label('ground',                6, 255, 'void',         0, False, True, (81, 0, 81)),
    Label('road',                  7,   0, 'flat',         1, False, False, (128, 64, 128)),
    Label('sidewalk',              8,   1, 'flat',         1, False, False, (244, 35, 232)),
    Label('parking',               9, 255, 'flat',         1, False, True, (250, 170, 160)),
    Label('rail track',           10, 255, 'flat',         1, False, True, (230, 150, 140)),
    Label('building',             11,   2, 'construction', 2, False, False, (70, 70, 70)),
    Label('wall',                 12,   3, 'construction', 2, False, False, (102, 102, 156)),
    Label('fence',                13,   4, 'construction', 2, False, False, (190, 153, 153)),
    Label('guard rail',           14, 255, 'construction', 2, False, True, (180, 165, 180)),
    Label('bridge',               15, 255, 'construction', 2, False, True, (150, 100, 100)),
    Label('tunnel',               16, 255, 'construction', 2, False, True, (150, 120, 90)),
    Label('pole',                 17,   5, 'object',       3, False, False, (153, 153, 153)),
    Label('polegroup',            18, 255, 'object',       3, False, True, (153, 153, 153)),
    Label('traffic light',        19,   6, 'object',       3, False, False, (250, 170, 30)),
    Label('traffic sign',         20,   7, 'object',       3, False, False, (220, 220, 0)),
    Label('vegetation',           21,   8, 'nature',       4, False, False, (107, 142, 35)),
    Label('terrain',              22,   9, 'nature',       4, False, False, (152, 251, 152)),
    Label('sky',                  23,  10, 'sky',          5, False, False, (70, 130, 180)),
    Label('person',               24,  11, 'human',        6, True, False, (220, 20, 60)),
    Label('rider',                25,  12, 'human',        6, True, False, (255, 0, 0)),
    Label('car',                  26,  13, 'vehicle',      7, True, False, (0, 0, 142)),
    Label('truck',                27,  14, 'vehicle',      7, True, False, (0, 0, 70)),
    Label('bus',                  28,  15, 'vehicle',      7, True, False, (0, 60, 100)),
    Label('caravan',              29, 255, 'vehicle',      7, True, True, (0, 0, 90)),
    Label('trailer',              30, 255, 'vehicle',      7, True, True, (0, 0, 110)),
    Label('train',                31,  16, 'vehicle',      7, True, False, (0, 80, 100)),
    Label('motorcycle',           32,  17, 'vehicle',      7, True, False, (0, 0, 230)),
    Label('bicycle',              33,  18, 'vehicle',      7, True, False, (119, 11, 32)),
    Label('license plate',        -1,  -1, 'vehicle',      7, False, True, (0, 0, 142)),
)

_BY_NAME = {label.name: label for label in LABELS}


def label(name):
    """The Cityscapes :class:`Label` of a label name such as ``'car'``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f'unknown Cityscapes label {name!r}; labels are: '
                       f"{', '.join(_BY_NAME)}") from None


def label_id(name):
    """The official Cityscapes labelId of a label name such as ``'car'``."""
    return label(name).id


def label_id_to_train_id_lut():
    """A 256-entry uint8 table mapping labelIds to trainIds.

    Labels that are not trained on (trainId 255 or -1 in the official table)
    and ids the table does not know map to :data:`IGNORE_INDEX`.
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in LABELS:
        if 0 <= label.id < 256 and 0 <= label.train_id < NUM_CLASSES:
            lut[label.id] = label.train_id
    return lut


def train_id_to_label_id_lut():
    """A 256-entry uint8 table mapping trainIds 0-18 to labelIds (others to 0,
    'unlabeled'): what Cityscapes' evaluation reads from ``*_labelIds.png``."""
    lut = np.zeros(256, np.uint8)
    for label in LABELS:
        if 0 <= label.train_id < NUM_CLASSES:
            lut[label.train_id] = label.id
    return lut
