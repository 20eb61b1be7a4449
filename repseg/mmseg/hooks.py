"""Runner add-ons for ``tools/train.py`` and ``tools/test.py``.

* :class:`AtomicCheckpointHook`: mmengine's ``CheckpointHook`` writes checkpoints and the
  ``last_checkpoint`` pointer in place, so a crash mid-write leaves a truncated "latest"
  that ``--resume`` then fails on. Here every file is written to a temporary name in the
  same folder and renamed over the target (``os.replace`` is atomic on POSIX), the new
  checkpoint is complete before the pointer moves to it, and old checkpoints are removed
  only after that. Weights holding NaN/Inf are never saved, and ``max_keep_ckpts`` holds
  across ``--resume``.
* :class:`CityscapesLabelIdsHook`: writes test predictions as Cityscapes ``*_labelIds.png``
  for the official evaluation script (``csEvalPixelLevelSemanticLabeling``).
* :class:`PerClassIoUMetric`: mmseg's ``IoUMetric`` that also keeps the per-class IoU and
  accuracy it logs, so ``tools/test.py`` can write them to its metrics JSON.
"""
from __future__ import annotations

import os
import os.path as osp
import shlex
from collections import deque
from typing import Optional, Sequence

import cv2
import numpy as np
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmseg.evaluation import IoUMetric
from mmseg.registry import HOOKS, METRICS

from ..data import cityscapes_layout as layout
from ..fileio import write_bytes_atomically, write_text_atomically
from .nonfinite import refuse_nonfinite_weights

#: File backend name of :class:`AtomicLocalBackend` (``backend_args=dict(backend=...)``).
ATOMIC_BACKEND = 'atomic_local'
#: File in the work dir naming the latest checkpoint (mmengine's resume looks there).
POINTER_FILE = 'last_checkpoint'
#: Name ending of the predictions :class:`CityscapesLabelIdsHook` writes.
LABELIDS_SUFFIX = '_labelIds.png'
#: cityscapesscripts' console script for pixel-level (semantic) evaluation.
CITYSCAPES_EVAL_SCRIPT = 'csEvalPixelLevelSemanticLabeling'


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic ``put`` and ``put_text``."""

    def put(self, obj: bytes, filepath) -> None:
        write_bytes_atomically(filepath, obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        write_text_atomically(filepath, obj, encoding)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints and ``last_checkpoint`` pointer are written
    atomically (see the module docstring). Takes the same arguments; without
    ``backend_args`` (or ``file_client_args``) files go through :class:`AtomicLocalBackend`.

    Also:

    * no checkpoint holding a NaN/Inf tensor is written
      (:func:`repseg.mmseg.nonfinite.refuse_nonfinite_weights` stops the run instead);
    * ``max_keep_ckpts`` holds across ``--resume``: each checkpoint records the rotation
      including itself, so the resumed-from file counts and is rotated out in turn;
    * the best checkpoint (``save_best``) is apart from the rotation, and the previous
      best is removed only once the new one is complete.
    """

    def __init__(self, *args, backend_args: Optional[dict] = None, **kwargs):
        if backend_args is None and kwargs.get('file_client_args') is None:
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, backend_args=backend_args, **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        resumed = self.filename_tmpl.format(runner.iter)
        if (self.max_keep_ckpts > 0 and runner.iter > 0 and runner.iter not in self.keep_ckpt_ids
                and self.file_backend.isfile(self.file_backend.join_path(self.out_dir, resumed))):
            # a checkpoint written before its own step was recorded (older repseg)
            self._rotate(runner, runner.iter)()

    def _save_checkpoint_with_step(self, runner, step, meta):
        refuse_nonfinite_weights(runner, f'checkpoint {self.filename_tmpl.format(step)}')
        remove_stale = self._rotate(runner, step)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
            backend_args=self.backend_args, **self.args)
        if is_main_process():
            write_text_atomically(osp.join(runner.work_dir, POINTER_FILE), self.last_ckpt)
        remove_stale()

    def _rotate(self, runner, step: int):
        """Record ``step`` among the newest ``max_keep_ckpts`` periodic checkpoints (before
        its checkpoint is saved, so the checkpoint knows it is kept); return a function
        that removes the checkpoints that fell out, to call once ``step``'s is complete."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return lambda: None
        steps = [*self.keep_ckpt_ids, step]
        stale, kept = steps[:-self.max_keep_ckpts], steps[-self.max_keep_ckpts:]
        self.keep_ckpt_ids = deque(kept, self.max_keep_ckpts)
        runner.message_hub.update_info('keep_ckpt_ids', kept)
        return lambda: self._remove(
            [self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
             for old in stale])

    def _remove(self, paths) -> None:
        if not is_main_process():
            return
        for path in paths:
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by DeepSpeed are folders
                self.file_backend.rmtree(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's best-checkpoint logic, with the previous best removed only after
        the new best (and the periodic checkpoint recording it) is written."""
        if not self.save_best:
            return
        refuse_nonfinite_weights(runner, 'the best checkpoint')
        backend = self.file_backend
        stale: list = []
        backend.remove, backend.rmtree = stale.append, stale.append  # deferred
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            del backend.remove, backend.rmtree  # the class's methods again
        self._remove(stale)


def labelids_name(img_path: str) -> str:
    """``frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294_labelIds.png``
    (the name cityscapesscripts' evaluation matches by ``<city>_<seq>_<frame>``)."""
    name = osp.basename(img_path)
    if name.endswith(layout.IMG_SUFFIX):
        stem = name[:-len(layout.IMG_SUFFIX)]
    else:
        stem = osp.splitext(name)[0]
    return stem + LABELIDS_SUFFIX


def cityscapes_eval_command(data_root: Optional[str], results: str, export_dir: str) -> str:
    """The shell command that runs cityscapesscripts' pixel-level evaluation of the
    ``*_labelIds.png`` in ``results`` against ``<data_root>/gtFine/val``; it writes
    ``resultPixelLevelSemanticLabeling.json`` to ``export_dir``."""
    def path(value):
        return shlex.quote(osp.abspath(value))

    dataset = path(data_root) if data_root else '<your Cityscapes root>'
    return (f'CITYSCAPES_DATASET={dataset} CITYSCAPES_RESULTS={path(results)} '
            f'CITYSCAPES_EXPORT_DIR={path(export_dir)} {CITYSCAPES_EVAL_SCRIPT}')


@HOOKS.register_module()
class CityscapesLabelIdsHook(Hook):
    """Write every test prediction to ``out_dir`` as a Cityscapes ``*_labelIds.png``.

    Predictions are trainIds (0-18); the official evaluation reads labelIds, so each is
    mapped through :func:`repseg.data.cityscapes_layout.train_id_to_label_id_lut`. Each
    rank writes its own images. After the test, the exact command of the official
    evaluation is logged (:func:`cityscapes_eval_command`; ``data_root`` is the test
    set's Cityscapes root).
    """

    priority = 'NORMAL'

    def __init__(self, out_dir: str, data_root: Optional[str] = None):
        self.out_dir = out_dir
        self.data_root = data_root
        self.lut = layout.train_id_to_label_id_lut()
        self.written = 0

    def before_test(self, runner) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        self.written = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch=None,
                        outputs: Optional[Sequence] = None) -> None:
        for sample in outputs or ():
            labels = sample.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
            path = osp.join(self.out_dir, labelids_name(sample.img_path))
            if not cv2.imwrite(path, self.lut[labels]):
                raise OSError(f'could not write {path}')
            self.written += 1

    def after_test(self, runner) -> None:
        command = cityscapes_eval_command(self.data_root, self.out_dir, runner.work_dir)
        runner.logger.info(
            f'wrote {self.written} Cityscapes *_labelIds.png predictions to {self.out_dir}. '
            "Cityscapes' own evaluation scores them against every frame of "
            '<root>/gtFine/val (instance-level scores from its *_gtFine_instanceIds.png) '
            f'and writes resultPixelLevelSemanticLabeling.json to {runner.work_dir}:\n'
            f'    {command}')


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """``IoUMetric`` that keeps its per-class table in :attr:`per_class` after evaluation:
    ``{class name: {'IoU': %, 'Acc': %, ...}}``, None where a class is absent (NaN)."""

    per_class: dict = {}

    def compute_metrics(self, results: list) -> dict:
        summary = super().compute_metrics(results)
        if not results:
            return summary
        totals = [sum(column) for column in zip(*results)]
        values = self.total_area_to_metrics(*totals, self.metrics, self.nan_to_num, self.beta)
        values.pop('aAcc', None)
        self.per_class = {
            name: {metric: _percent(per_class[index]) for metric, per_class in values.items()}
            for index, name in enumerate(self.dataset_meta['classes'])
        }
        return summary


def _percent(value) -> Optional[float]:
    value = float(value)
    return None if np.isnan(value) else round(value * 100, 2)
