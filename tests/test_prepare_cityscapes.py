"""Preparing a Cityscapes root: layout checks, trainId labels, split lists."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from repseg.data import cityscapes_layout as layout
from repseg.data.prepare import find_frames, prepare_cityscapes
from repseg.data.validate import DatasetError

# The official label table (requirements-ci.txt); GPU images may lack the package.
cs_labels = pytest.importorskip('cityscapesscripts.helpers.labels').labels

REPO = Path(__file__).resolve().parents[1]
SAMPLE = (Path(__file__).resolve().parents[2] / 'shared' / 'data' /
          'cityscapes_sample')
FRAME = 'frankfurt/frankfurt_000000_000294'


def _frame(root, split, stem, polygons=None, label_ids=None,
           size=(64, 128)):
    """Write one image and, optionally, its polygons JSON / labelIds PNG."""
    img = root / layout.img_dir(split) / (stem + layout.IMG_SUFFIX)
    img.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img), np.full(size + (3, ), 90, np.uint8))
    ann = root / layout.ann_dir(split) / stem
    ann.parent.mkdir(parents=True, exist_ok=True)
    if polygons is not None:
        objects = [dict(label=name, polygon=points)
                   for name, points in polygons]
        Path(str(ann) + layout.POLYGON_SUFFIX).write_text(json.dumps(dict(
            imgHeight=size[0], imgWidth=size[1], objects=objects)))
    if label_ids is not None:
        cv2.imwrite(str(ann) + layout.LABEL_ID_SUFFIX, label_ids)
    return Path(str(ann) + layout.TRAIN_ID_SUFFIX)


ROAD = ('road', [[0, 40], [127, 40], [127, 63], [0, 63]])
CAR = ('car', [[40, 20], [80, 20], [80, 50], [40, 50]])
PARKING = ('parking', [[100, 0], [127, 0], [127, 10], [100, 10]])


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_layout_constants_match_cityscapesscripts():
    trained = sorted((l for l in cs_labels if 0 <= l.trainId < 19),
                     key=lambda l: l.trainId)
    assert layout.CLASSES == tuple(l.name for l in trained)
    assert layout.PALETTE == tuple(l.color for l in trained)
    lut = layout.label_id_to_train_id_lut()
    assert (lut[7], lut[8], lut[26], lut[33]) == (0, 1, 13, 18)
    assert lut[0] == lut[9] == lut[250] == layout.IGNORE_INDEX


def test_sample_label_ids_reproduce_the_official_train_ids(tmp_path):
    if not SAMPLE.is_dir():
        pytest.skip(f'shared Cityscapes sample not found at {SAMPLE}')
    root = tmp_path / 'cityscapes'
    shutil.copytree(SAMPLE, root)
    output = root / 'gtFine/val' / (FRAME + layout.TRAIN_ID_SUFFIX)
    output.unlink()
    assert prepare_cityscapes(root) == {'val': 1}
    assert (root / 'val.txt').read_text() == FRAME + '\n'
    assert not (root / 'train.txt').exists()
    ours = _read(output)
    oracle = _read(SAMPLE / 'gtFine/val' / (FRAME + layout.TRAIN_ID_SUFFIX))
    assert ours.dtype == np.uint8 and ours.shape == oracle.shape
    # The sample's labelIds and labelTrainIds PNGs were downscaled apart, so
    # they disagree on 0.2% of pixels, all on label borders (even labelId 7,
    # road, under trainId 1 there): away from borders the match is exact.
    label_ids = _read(SAMPLE / 'gtFine/val' / (FRAME + layout.LABEL_ID_SUFFIX))
    kernel = np.ones((5, 5), np.uint8)
    interior = cv2.erode(label_ids, kernel) == cv2.dilate(label_ids, kernel)
    assert interior.mean() > 0.6
    assert np.array_equal(ours[interior], oracle[interior])
    assert (ours == oracle).mean() > 0.995


def test_polygons_become_train_ids(tmp_path):
    output = _frame(tmp_path, 'val', 'aachen/aachen_000000_000001',
                    polygons=[ROAD, CAR, PARKING])
    assert prepare_cityscapes(tmp_path) == {'val': 1}
    train_ids = _read(output)
    assert train_ids.shape == (64, 128) and train_ids.dtype == np.uint8
    assert train_ids[60, 10] == 0      # road
    assert train_ids[30, 60] == 13     # car, drawn over nothing
    assert train_ids[45, 60] == 13     # car drawn after the road covers it
    assert train_ids[5, 5] == 255      # unlabeled
    assert train_ids[5, 110] == 255    # parking has no trainId


def test_polygons_win_over_label_ids_and_pool_runs(tmp_path):
    outputs = [
        _frame(tmp_path, 'train', f'bonn/bonn_000000_{i:06d}',
               polygons=[ROAD], label_ids=np.full((64, 128), 26, np.uint8))
        for i in range(3)
    ]
    outputs.append(_frame(tmp_path, 'val', 'lindau/lindau_000000_000000',
                          label_ids=np.full((64, 128), 24, np.uint8)))
    assert prepare_cityscapes(tmp_path, nproc=2) == {'train': 3, 'val': 1}
    for output in outputs[:3]:
        assert _read(output)[60, 0] == 0 and _read(output)[0, 0] == 255
    assert (_read(outputs[3]) == 11).all()
    assert (tmp_path / 'train.txt').read_text().split() == [
        f'bonn/bonn_000000_{i:06d}' for i in range(3)]


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match='does not exist') as error:
        find_frames(tmp_path / 'nowhere')
    assert str(tmp_path / 'nowhere') in str(error.value)


@pytest.mark.parametrize('present,missing', [('gtFine', 'leftImg8bit'),
                                             ('leftImg8bit', 'gtFine')])
def test_missing_top_folder(tmp_path, present, missing):
    (tmp_path / present / 'val').mkdir(parents=True)
    with pytest.raises(DatasetError) as error:
        find_frames(tmp_path)
    assert f"'{tmp_path / missing}' is missing" in str(error.value)
    assert f'{missing}_trainvaltest.zip' in str(error.value)


def test_no_split_at_all(tmp_path):
    (tmp_path / 'leftImg8bit/test').mkdir(parents=True)
    (tmp_path / 'gtFine').mkdir()
    with pytest.raises(DatasetError, match='neither') as error:
        find_frames(tmp_path)
    assert str(tmp_path / 'leftImg8bit/train') in str(error.value)
    assert str(tmp_path / 'leftImg8bit/val') in str(error.value)


def test_missing_label_split_folder(tmp_path):
    _frame(tmp_path, 'val', 'ulm/ulm_000000_000000', polygons=[ROAD])
    stem = 'ulm/ulm_000000_000001'
    img = tmp_path / 'leftImg8bit/train' / (stem + layout.IMG_SUFFIX)
    img.parent.mkdir(parents=True)
    img.write_bytes(b'')
    with pytest.raises(DatasetError) as error:
        find_frames(tmp_path)
    assert f"label folder '{tmp_path / 'gtFine/train'}' is missing" in str(
        error.value)


def test_empty_split(tmp_path):
    (tmp_path / 'leftImg8bit/val/ulm').mkdir(parents=True)
    (tmp_path / 'gtFine/val').mkdir(parents=True)
    with pytest.raises(DatasetError, match='no images') as error:
        find_frames(tmp_path)
    assert str(tmp_path / 'leftImg8bit/val') in str(error.value)


def test_image_without_label_source(tmp_path):
    _frame(tmp_path, 'val', 'ulm/ulm_000000_000000', polygons=[ROAD])
    _frame(tmp_path, 'val', 'ulm/ulm_000000_000001')
    with pytest.raises(DatasetError, match='1 of 2 val images') as error:
        prepare_cityscapes(tmp_path)
    message = str(error.value)
    assert 'ulm_000000_000001_leftImg8bit.png' in message
    assert 'ulm_000000_000001_gtFine_polygons.json' in message
    assert 'ulm_000000_000001_gtFine_labelIds.png' in message
    assert not (tmp_path / 'val.txt').exists()


def test_unknown_polygon_label(tmp_path):
    _frame(tmp_path, 'val', 'ulm/ulm_000000_000000',
           polygons=[('spaceship', ROAD[1])])
    with pytest.raises(DatasetError, match='unknown') as error:
        prepare_cityscapes(tmp_path)
    assert 'ulm_000000_000000_gtFine_polygons.json' in str(error.value)


def test_unreadable_label_ids(tmp_path):
    _frame(tmp_path, 'val', 'ulm/ulm_000000_000000',
           label_ids=np.zeros((64, 128), np.uint8))
    source = tmp_path / 'gtFine/val/ulm/ulm_000000_000000_gtFine_labelIds.png'
    source.write_bytes(b'not a png')
    with pytest.raises(DatasetError, match='not a readable') as error:
        prepare_cityscapes(tmp_path)
    assert str(source) in str(error.value)


def test_cli_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools/prepare_cityscapes.py'),
         str(tmp_path / 'nowhere'), '--nproc', '2'],
        capture_output=True, text=True)
    assert result.returncode == 2  # a user error, as in every tool
    assert result.stderr.startswith('error: ') and 'does not exist' in result.stderr
    assert 'Traceback' not in result.stderr
