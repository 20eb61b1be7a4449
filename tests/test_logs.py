"""repseg.logs: the known-harmless third-party notices are silenced, nothing else is.

The notices are raised by mmseg's and mmengine's own code here (building a loss, a
visualization hook, a FileClient), not imitated; the warnings that must survive come from
the same modules with other messages. (pytest.ini ignores these notices for the suite, so
each test records warnings with its own filters.)"""
import logging
import uuid
import warnings

import pytest
from mmengine.fileio import FileClient
from mmengine.logging import MMLogger, print_log
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.models.builder import build_loss
from mmseg.visualization import SegLocalVisualizer

from repseg.logs import quiet_logger, silence_known_warnings

LOSS_MODULE = 'mmseg.models.losses.cross_entropy_loss'


def _warnings_of(action, silence):
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter('always')
        if silence:
            silence_known_warnings()
        action()
    return [str(w.message) for w in caught]


def _harmless_and_other_warnings():
    build_loss(dict(type='CrossEntropyLoss', loss_weight=1.0))  # build_loss + avg_non_ignore
    SegLocalVisualizer.get_instance(f'repseg_test_logs_{uuid.uuid4().hex}')
    SegVisualizationHook(draw=False)
    warnings.warn_explicit('a loss weight of 0 ignores this head', UserWarning, 'x.py', 1,
                           module=LOSS_MODULE)
    warnings.warn('something a user must see', UserWarning)


def test_harmless_warnings_silenced_others_kept():
    before = _warnings_of(_harmless_and_other_warnings, silence=False)
    after = _warnings_of(_harmless_and_other_warnings, silence=True)
    for notice in ('build_loss', 'avg_non_ignore', 'The draw is False'):
        assert any(notice in message for message in before), notice  # really raised
        assert not any(notice in message for message in after), notice
    assert after == ['a loss weight of 0 ignores this head', 'something a user must see']


@pytest.fixture
def quiet_mm_logger():
    """A fresh MMLogger with :func:`quiet_logger` applied, and the records it passes on."""
    name = f'repseg_test_logs_{uuid.uuid4().hex}'  # new, so the current instance
    logger = MMLogger.get_instance(name, logger_name=name)
    passed = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = passed.append
    logger.addHandler(handler)
    quiet_logger(logger)
    quiet_logger(logger)  # twice: still one filter
    yield logger, passed
    logger.removeHandler(handler)


def test_harmless_mmengine_records_dropped_others_kept(quiet_mm_logger):
    logger, passed = quiet_mm_logger
    assert len(logger.filters) == 1
    FileClient(backend='disk')  # mmengine logs its deprecation to the current logger
    print_log('The prefix is not set in metric class IoUMetric.', logger=logger,
              level=logging.WARNING)
    print_log('Found NaN in the loss', logger=logger, level=logging.WARNING)
    print_log('"FileClient" will be deprecated: but said at ERROR level', logger=logger,
              level=logging.ERROR)
    messages = [record.getMessage() for record in passed]
    assert messages == ['Found NaN in the loss',
                        '"FileClient" will be deprecated: but said at ERROR level']
