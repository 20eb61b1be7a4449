"""Quiet, useful logs: the known-harmless third-party warnings, silenced by name.

Every run of repseg's tools used to print the same notices from mmseg and mmengine that
say nothing about the user's run. Each is listed here with the reason it is harmless, and
matched by its exact message (and the module that issues it), so any other warning, from
the same modules too, still shows. Python warnings are silenced by the tools only (a
user's own script keeps every warning); the mmengine log records are about mmengine's own
internals and are dropped from the log of every Runner that repseg builds.

Python warnings (:data:`HARMLESS_WARNINGS`, silenced by :func:`silence_known_warnings`):

* mmseg's ``build_loss`` deprecation: mmseg's own decode heads call ``build_loss``.
* mmseg's ``avg_non_ignore`` notice: the paper's PSPNet (and mmseg's configs) average the
  cross-entropy over all pixels, ignored ones counting zero; repseg keeps that loss on
  purpose, so the notice that another average exists is no news.
* mmseg's visualization hook "draw is False": drawing is off unless ``--show-dir`` asks.

mmengine log records (:data:`HARMLESS_LOG_RECORDS`, dropped by :func:`quiet_logger`):

* ``"FileClient" will be deprecated`` and ``"HardDiskBackend" is the alias``: mmengine's
  own ``CheckpointHook`` and ``LoggerHook`` build a ``FileClient`` on every run.
* ``The prefix is not set in metric class ...``: mmseg's metrics have no prefix; the
  metric names (``mIoU``, ...) are the ones every mmseg user reads.
"""
from __future__ import annotations

import logging
import re
import warnings

#: ``(category, message regex, issuing module regex)`` of each harmless Python warning.
HARMLESS_WARNINGS = (
    (UserWarning, r'``build_loss`` would be deprecated soon', r'mmseg\.models\.builder'),
    (UserWarning, r'Default ``avg_non_ignore`` is False',
     r'mmseg\.models\.losses\.cross_entropy_loss'),
    (UserWarning, r'The draw is False, it means that the hook for visualization',
     r'mmseg\.engine\.hooks\.visualization_hook'),
)

#: Message regexes of harmless mmengine log records (level WARNING).
HARMLESS_LOG_RECORDS = (
    r'"FileClient" will be deprecated in future',
    r'"HardDiskBackend" is the alias of "LocalBackend"',
    r'The prefix is not set in metric class \w+\.$',
)


def silence_known_warnings() -> None:
    """Ignore exactly the warnings of :data:`HARMLESS_WARNINGS` (for the tools)."""
    for category, message, module in HARMLESS_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category, module=module)


class _HarmlessRecordFilter(logging.Filter):
    """Drops the WARNING records of :data:`HARMLESS_LOG_RECORDS`."""

    patterns = [re.compile(pattern) for pattern in HARMLESS_LOG_RECORDS]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.patterns)


def quiet_logger(logger: logging.Logger) -> None:
    """Drop the harmless records of :data:`HARMLESS_LOG_RECORDS` from ``logger`` (a
    Runner's MMLogger; mmengine creates one per run, so each run needs this once)."""
    if not any(isinstance(f, _HarmlessRecordFilter) for f in logger.filters):
        logger.addFilter(_HarmlessRecordFilter())
