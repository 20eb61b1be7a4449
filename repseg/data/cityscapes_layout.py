"""The Cityscapes dataset layout, written once as data.

Everything else in :mod:`repseg.data` (the toy city, the preparation tool,
the dataset checks) reads its class list, palette, file suffixes and folder
names from here. The labelId -> trainId table is not copied: it is built from
``cityscapesscripts.helpers.labels``, the official definition.
"""
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
POLYGON_SUFFIX = '_gtFine_polygons.json'


def img_dir(split):
    """Image folder of ``split`` relative to the data root, e.g.
    ``leftImg8bit/train``; one sub-folder per city lies below it."""
    return f'{IMG_ROOT}/{split}'


def ann_dir(split):
    """Annotation folder of ``split`` relative to the data root, e.g.
    ``gtFine/train``."""
    return f'{ANN_ROOT}/{split}'


def label_id(name):
    """The official Cityscapes labelId of a label name such as ``'car'``."""
    from cityscapesscripts.helpers.labels import name2label
    return name2label[name].id


def label_id_to_train_id_lut():
    """A 256-entry uint8 table mapping labelIds to trainIds.

    Labels that are not trained on (trainId 255 or -1 in the official table)
    and ids the table does not know map to :data:`IGNORE_INDEX`.
    """
    from cityscapesscripts.helpers.labels import labels
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < NUM_CLASSES:
            lut[label.id] = label.trainId
    return lut
