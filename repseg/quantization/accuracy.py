"""How much an ONNX model's predictions differ from the fp32 model's: mIoU and agreement.

Both models run through :class:`repseg.onnx_backend.OnnxRuntimeSegmentor`, i.e. mmseg's
predict path with the config's test mode, on the same packed items. With labels (the
config's val split) the mIoU comes from the config's ``test_evaluator`` through mmengine's
``Evaluator``, the code ``tools/test.py`` runs; pixel agreement is the share of pixels
predicted as the fp32 model predicts them.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from mmengine.config import Config
from mmengine.logging import MMLogger
from tqdm import tqdm

from ..inference import labels_of
from ..onnx_backend import OnnxRuntimeSegmentor, segmentor_arguments


@dataclass(frozen=True)
class Scores:
    """One model's accuracy: ``agreement`` (percent of pixels predicted as the fp32 model
    does) and ``miou`` (percent, None without labels)."""

    agreement: float
    miou: Optional[float] = None

    def describe(self) -> str:
        text = f'pixel agreement {self.agreement:.2f}%'
        return text if self.miou is None else f'mIoU {self.miou:.2f}, {text}'


@contextlib.contextmanager
def _no_metric_tables():
    """mmseg's IoUMetric logs its per-class table on every evaluation; the search
    evaluates many models, so only the summary numbers are reported."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class AccuracyCheck:
    """Scores ONNX models (serialized bytes) on fixed items against an fp32 reference.

    Args:
        cfg: the config (model test mode and classes; ``test_evaluator`` with labels).
        items: packed test-pipeline items (:mod:`repseg.quantization.data`).
        with_metric: items carry labels: compute the config's mIoU as well.
        threads: ONNX Runtime intra-op threads.
        progress: show a progress bar per pass.
    """

    def __init__(self, cfg: Config, items: Sequence, with_metric: bool,
                 threads: Optional[int] = None, progress: bool = True):
        self.cfg, self.items, self.with_metric = cfg, items, with_metric
        self.threads, self.progress = threads, progress
        self.reference_labels: list[np.ndarray] = []

    def _segmentor(self, model: bytes) -> OnnxRuntimeSegmentor:
        return OnnxRuntimeSegmentor(model, threads=self.threads,
                                    **segmentor_arguments(self.cfg.model)).eval()

    def _evaluator(self):
        from mmengine.evaluator import Evaluator

        evaluator = Evaluator(self.cfg.test_evaluator)
        evaluator.dataset_meta = getattr(self.items, 'metainfo', None)
        return evaluator

    def _predict(self, model: bytes, count: int, desc: Optional[str]):
        """``(batch, outputs)`` for the first ``count`` items, one image per batch (a
        progress bar unless ``desc`` is None)."""
        from mmengine.dataset import pseudo_collate

        segmentor = self._segmentor(model)
        for index in tqdm(range(count), desc=desc, unit='img', leave=False,
                          disable=not self.progress or desc is None):
            batch = pseudo_collate([self.items[index]])
            yield batch, segmentor.test_step(batch)

    def reference(self, model: bytes) -> Scores:
        """Run the fp32 model: keep its labels, return its scores (agreement 100%)."""
        self.reference_labels = []
        evaluator = self._evaluator() if self.with_metric else None
        for batch, outputs in self._predict(model, len(self.items), 'fp32 model'):
            self.reference_labels += list(_labels(outputs))
            if evaluator is not None:
                evaluator.process(outputs, batch)
        return Scores(100.0, self._miou(evaluator))

    def score(self, model: bytes, limit: Optional[int] = None,
              desc: Optional[str] = 'INT8 model') -> Scores:
        """Scores of ``model``; with ``limit`` only agreement on the first ``limit`` items
        (``desc``: progress bar title, None for none)."""
        if not self.reference_labels:
            raise RuntimeError('run reference() with the fp32 model first')
        count = len(self.items) if limit is None else min(limit, len(self.items))
        evaluator = self._evaluator() if self.with_metric and limit is None else None
        same = total = 0
        for index, (batch, outputs) in enumerate(
                self._predict(model, count, desc)):
            labels = _labels(outputs)[0]
            same += int((labels == self.reference_labels[index]).sum())
            total += labels.size
            if evaluator is not None:
                evaluator.process(outputs, batch)
        return Scores(100.0 * same / max(total, 1), self._miou(evaluator))

    def _miou(self, evaluator) -> Optional[float]:
        if evaluator is None:
            return None
        with _no_metric_tables():
            metrics = evaluator.evaluate(len(self.items))
        key = next((k for k in metrics if k.split('/')[-1] == 'mIoU'), None)
        return None if key is None else float(metrics[key])


def _labels(samples) -> np.ndarray:
    return labels_of(samples).cpu().numpy().astype(np.uint8)
