"""Dataset checks: every bad input names the file and the problem."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from repseg.data import cityscapes_layout as layout
from repseg.data.validate import DatasetError, check_cityscapes_split

STEMS = ('aachen/aachen_000000_000000', 'aachen/aachen_000001_000000',
         'bremen/bremen_000000_000000')


def _paths(root, stem):
    return (root / 'leftImg8bit/train' / (stem + layout.IMG_SUFFIX),
            root / 'gtFine/train' / (stem + layout.TRAIN_ID_SUFFIX))


@pytest.fixture
def root(tmp_path):
    """Three valid 32x64 pairs in the Cityscapes layout."""
    rng = np.random.default_rng(0)
    for stem in STEMS:
        img, label = _paths(tmp_path, stem)
        img.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img), rng.integers(0, 256, (32, 64, 3), np.uint8))
        seg = rng.integers(0, 19, (32, 64), np.uint8)
        seg[:4] = 255
        cv2.imwrite(str(label), seg)
    return tmp_path


def _check(root, **kwargs):
    return check_cityscapes_split(root, progress=False, **kwargs)


def _raises(root, *needles, **kwargs):
    with pytest.raises(DatasetError) as error:
        _check(root, **kwargs)
    message = str(error.value)
    for needle in needles:
        assert str(needle) in message, message
    return message


def test_valid_split(root):
    assert issubclass(DatasetError, ValueError)
    assert _check(root) == 3
    assert _check(root, max_files=1) == 3


def test_missing_data_root(tmp_path):
    _raises(tmp_path / 'cityscapes', tmp_path / 'cityscapes', 'does not exist',
            'tools/prepare_cityscapes.py', 'tools/make_toy_cityscapes.py')


def test_missing_image_folder(root):
    _raises(root, f"'{root / 'leftImg8bit/val'}' does not exist",
            layout.IMG_SUFFIX, img_dir='leftImg8bit/val')


def test_missing_label_folder(root):
    _raises(root, f"'{root / 'gtFine/val'}' does not exist",
            layout.TRAIN_ID_SUFFIX, ann_dir='gtFine/val')


def test_empty_image_folder(root):
    (root / 'leftImg8bit/val/ulm').mkdir(parents=True)
    _raises(root, 'no images', root / 'leftImg8bit/val',
            img_dir='leftImg8bit/val')


def test_image_without_label(root):
    img, label = _paths(root, STEMS[1])
    label.unlink()
    message = _raises(root, '1 of 3 images have no label', img, label)
    assert 'prepare_cityscapes' not in message


def test_label_ids_but_no_train_ids_says_run_prepare(root):
    for stem in STEMS:
        img, label = _paths(root, stem)
        label.rename(str(label).replace(layout.TRAIN_ID_SUFFIX,
                                        layout.LABEL_ID_SUFFIX))
    _raises(root, '3 of 3 images have no label', _paths(root, STEMS[0])[1],
            layout.LABEL_ID_SUFFIX, f'tools/prepare_cityscapes.py {root}')


def test_many_missing_labels_are_summarised(root):
    for i in range(7):
        img = _paths(root, f'ulm/ulm_000000_{i:06d}')[0]
        img.parent.mkdir(exist_ok=True)
        img.write_bytes(b'')
    message = _raises(root, '7 of 10 images have no label', 'and 2 more')
    assert message.count('expects label') == 5


@pytest.mark.parametrize('bad', [[19], [7, 33], [254]])
def test_label_values_out_of_range(root, bad):
    label = _paths(root, STEMS[2])[1]
    seg = np.zeros((32, 64), np.uint8)
    seg[0, :len(bad)] = bad
    cv2.imwrite(str(label), seg)
    expected = [v for v in bad if v >= 19]
    message = _raises(root, label, f'values {expected}', '0..18')
    assert ('labelIds' in message) == (max(bad) <= 33)


def test_max_files_limits_the_content_check_only(root):
    label = _paths(root, STEMS[2])[1]
    cv2.imwrite(str(label), np.full((32, 64), 40, np.uint8))
    assert _check(root, max_files=2) == 3
    _raises(root, label, max_files=3)
    _paths(root, STEMS[1])[1].unlink()
    _raises(root, 'have no label', max_files=1)


@pytest.mark.parametrize('which', [0, 1])
@pytest.mark.parametrize('content', ['garbage', 'truncated'])
def test_corrupt_png(root, which, content):
    path = _paths(root, STEMS[0])[which]
    data = path.read_bytes()
    path.write_bytes(b'not a png' if content == 'garbage' else
                     data[:len(data) // 2])
    _raises(root, f"cannot read {('image', 'label')[which]} '{path}'",
            'corrupt')


def test_size_mismatch(root):
    img, label = _paths(root, STEMS[1])
    cv2.imwrite(str(label), np.zeros((16, 64), np.uint8))
    _raises(root, img, label, 'is 64x32', 'is 64x16')


def test_colour_label(root):
    label = _paths(root, STEMS[0])[1]
    cv2.imwrite(str(label), np.zeros((32, 64, 3), np.uint8))
    _raises(root, label, '3 channels', 'single-channel')


def test_relative_data_root(root, monkeypatch):
    monkeypatch.chdir(root.parent)
    assert _check(Path(root.name)) == 3
