"""The toy city: deterministic, in the exact Cityscapes layout, learnable."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from repseg.data import cityscapes_layout as layout
from repseg.data.toy_city import make_toy_cityscapes
from repseg.data.validate import check_cityscapes_split

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ('road', 'sidewalk', 'building', 'sky', 'vegetation', 'car',
            'person', 'pole')


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_city')
    fractions = make_toy_cityscapes(root)
    return root, fractions


def _files(root):
    return {p.relative_to(root): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(num_train=3, num_val=1, size=(64, 128))
    make_toy_cityscapes(tmp_path / 'a', seed=7, **kwargs)
    make_toy_cityscapes(tmp_path / 'b', seed=7, **kwargs)
    make_toy_cityscapes(tmp_path / 'c', seed=8, **kwargs)
    a, b, c = (_files(tmp_path / n) for n in 'abc')
    assert len(a) == 2 + 4 * 4  # split lists; image, labelIds, instanceIds, trainIds
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.suffix == '.png']
    assert all(a[k] != c[k] for k in pngs)


def test_layout_and_split_lists(toy):
    root, _ = toy
    for split, num, seq in (('train', 48, 0), ('val', 12, 1)):
        names = (root / f'{split}.txt').read_text().split()
        assert len(names) == num
        assert names[1] == f'toycity/toycity_{seq:06d}_000001'
        for name in names:
            img = root / layout.img_dir(split) / (name + layout.IMG_SUFFIX)
            rgb = cv2.imread(str(img), cv2.IMREAD_UNCHANGED)
            assert rgb.shape == (128, 256, 3) and rgb.dtype == np.uint8
            for suffix in (layout.LABEL_ID_SUFFIX, layout.TRAIN_ID_SUFFIX):
                ann = root / layout.ann_dir(split) / (name + suffix)
                label = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
                assert label.shape == (128, 256) and label.dtype == np.uint8


def test_mmseg_cityscapes_dataset_reads_it(toy):
    root, _ = toy
    # importing repseg (above) applies repseg.compat, which lets mmseg import
    # on mmcv-lite; skip rather than fail where that is not in place yet
    datasets = pytest.importorskip('mmseg.datasets')
    train = datasets.CityscapesDataset(
        data_root=str(root), pipeline=[],
        data_prefix=dict(img_path='leftImg8bit/train',
                         seg_map_path='gtFine/train'))
    assert len(train) == 48
    assert Path(train[0]['seg_map_path']).is_file()
    val = datasets.CityscapesDataset(
        data_root=str(root), pipeline=[], ann_file='val.txt',
        data_prefix=dict(img_path='leftImg8bit/val',
                         seg_map_path='gtFine/val'))
    assert len(val) == 12
    assert val[3]['img_path'].endswith('toycity_000001_000003_leftImg8bit.png')


def test_classes_present_with_enough_pixels(toy):
    root, fractions = toy
    counts = np.zeros(256, np.int64)
    for ann in (root / 'gtFine/train').rglob('*' + layout.TRAIN_ID_SUFFIX):
        label = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
        counts += np.bincount(label.ravel(), minlength=256)
    measured = counts[:layout.NUM_CLASSES] / counts.sum()
    assert np.allclose(measured, [fractions[c] for c in layout.CLASSES])
    frequent = {c for c, f in zip(layout.CLASSES, measured) if f >= 0.005}
    assert set(REQUIRED) <= frequent, fractions
    assert len(frequent) >= 8


def test_label_ids_and_train_ids_agree(toy):
    root, _ = toy
    lut = layout.label_id_to_train_id_lut()
    anns = sorted((root / 'gtFine').rglob('*' + layout.LABEL_ID_SUFFIX))
    assert len(anns) == 60
    for ann in anns:
        ids = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
        train_ids = cv2.imread(
            str(ann).replace(layout.LABEL_ID_SUFFIX, layout.TRAIN_ID_SUFFIX),
            cv2.IMREAD_UNCHANGED)
        assert np.array_equal(lut[ids], train_ids), ann.name
        values = set(np.unique(train_ids).tolist())
        assert values <= set(range(layout.NUM_CLASSES)) | {255}


def test_instance_ids_as_cityscapes_defines_them(toy):
    """Read as cityscapesscripts' evaluation reads them (PIL): labelId * 1000 + k on the
    pixels of classes with instances (official table), the labelId elsewhere."""
    from cityscapesscripts.helpers.labels import id2label
    from PIL import Image

    root, _ = toy
    anns = sorted((root / 'gtFine').rglob('*' + layout.LABEL_ID_SUFFIX))
    instances_per_frame = []
    for ann in anns:
        ids = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
        path = str(ann).replace(layout.LABEL_ID_SUFFIX, layout.INSTANCE_ID_SUFFIX)
        instances = np.array(Image.open(path))
        with_instances = np.isin(ids, [i for i, lab in id2label.items() if lab.hasInstances])
        assert np.array_equal(instances >= 1000, with_instances), ann.name
        assert np.array_equal(np.where(with_instances, instances // 1000, instances), ids)
        instances_per_frame.append(len(np.unique(instances[with_instances])))
    assert min(instances_per_frame) >= 2 and np.mean(instances_per_frame) >= 5


def test_passes_the_dataset_checks(toy):
    root, _ = toy
    assert check_cityscapes_split(root, progress=False) == 48
    assert check_cityscapes_split(root, 'leftImg8bit/val', 'gtFine/val',
                                  progress=False) == 12


def test_rejects_tiny_frames(tmp_path):
    with pytest.raises(ValueError, match='at least 32x32'):
        make_toy_cityscapes(tmp_path, size=(16, 256))


def test_cli(tmp_path):
    out = tmp_path / 'toy'
    subprocess.run([sys.executable, str(REPO / 'tools/make_toy_cityscapes.py'),
                    str(out), '--train', '2', '--val', '1', '--size', '48',
                    '96', '--seed', '3'], check=True, capture_output=True)
    assert (out / 'train.txt').read_text().split() == [
        'toycity/toycity_000000_000000', 'toycity/toycity_000000_000001']
    img = out / 'leftImg8bit/val/toycity/toycity_000001_000000_leftImg8bit.png'
    assert cv2.imread(str(img)).shape == (48, 96, 3)
