"""repseg's own Cityscapes label table against cityscapesscripts', the official one.

repseg reads labels from :mod:`repseg.data.cityscapes_layout` so that nothing but the
evaluation needs cityscapesscripts at run time (GPU images lack it); the comparisons
skip where cityscapesscripts is not installed.
"""
import sys

import cv2
import numpy as np
import pytest

from repseg.data import cityscapes_layout as layout
from repseg.data.toy_city import make_toy_cityscapes


@pytest.fixture(scope='module')
def official():
    return pytest.importorskip('cityscapesscripts.helpers.labels')


def test_every_label_field_matches_cityscapesscripts(official):
    ours = [tuple(label) for label in layout.LABELS]
    theirs = [(label.name, label.id, label.trainId, label.category, label.categoryId,
               label.hasInstances, label.ignoreInEval, tuple(label.color))
              for label in official.labels]
    assert ours == theirs


def test_lookup_tables_match_cityscapesscripts(official):
    to_train = np.full(256, layout.IGNORE_INDEX, np.uint8)
    to_label = np.zeros(256, np.uint8)
    for label in official.labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < 19:
            to_train[label.id] = label.trainId
            to_label[label.trainId] = label.id
    np.testing.assert_array_equal(layout.label_id_to_train_id_lut(), to_train)
    np.testing.assert_array_equal(layout.train_id_to_label_id_lut(), to_label)
    for label in official.labels:
        assert layout.label_id(label.name) == label.id
    with pytest.raises(KeyError, match='unknown Cityscapes label'):
        layout.label_id('cat')


def test_toy_city_is_drawn_without_cityscapesscripts(tmp_path, monkeypatch):
    """The toy city and the labelIds writer work where cityscapesscripts is missing."""
    for name in [name for name in sys.modules if name.startswith('cityscapesscripts')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'cityscapesscripts', None)  # import now fails
    with pytest.raises(ImportError):
        import cityscapesscripts.helpers.labels  # noqa: F401
    make_toy_cityscapes(tmp_path, num_train=1, num_val=1, size=(32, 64))
    train_ids = cv2.imread(str(next(tmp_path.rglob('*' + layout.TRAIN_ID_SUFFIX))),
                           cv2.IMREAD_UNCHANGED)
    label_ids = cv2.imread(str(next(tmp_path.rglob('*' + layout.LABEL_ID_SUFFIX))),
                           cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(train_ids, layout.label_id_to_train_id_lut()[label_ids])
    assert layout.train_id_to_label_id_lut()[13] == 26
