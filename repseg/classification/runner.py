"""``tools/test.py`` and ``tools/train.py`` for classification configs.

The segmentation runner's machinery serves both tasks: :func:`repseg.mmseg.config.
prepare_config` (BN without CUDA, atomic checkpoints, the NaN guard, checked image
loading), :func:`repseg.mmseg.preflight.preflight` (every config key against
mmpretrain's registries, pretrained files), :func:`repseg.mmseg.runner.build_runner`
and its distributed start and error naming; training is
:func:`repseg.mmseg.runner.run_train` itself (resume checks, AMP, TensorBoard, work-dir
lock). What is classification's own is here: the dataset checks of
:mod:`repseg.classification.data`, weights of any layout loaded strictly into the
``ImageClassifier`` (:func:`~repseg.classification.model.load_classifier_weights`),
per-image predictions (``--out``) and ``.onnx`` models run by ONNX Runtime (written by
:mod:`repseg.classification.export`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmpretrain.models import BaseClassifier
from mmpretrain.registry import METRICS, MODELS

from ..errors import InvalidArgumentError
from ..fileio import write_text_atomically
from ..inference import half_precision_dtype
from ..mmseg import runner as seg_runner
from ..mmseg.builder import segmentor_of
from ..mmseg.config import prepare_config
from ..mmseg.preflight import PreflightError, preflight
from ..onnx_backend import OnnxGraph, is_onnx_file, refuse_precision_flags
from . import data, model as cls_model
from .export import ClassifierForExport, export_classifier_onnx  # noqa: F401 (their old home)

#: ``--out DIR`` writes this file: one record per image.
PREDICTIONS_FILE = 'predictions.json'
#: Top classes kept per image in ``--out`` predictions.
OUT_TOPK = 5
#: The loaders each mode reads (as the segmentation pre-flight counts them).
LOADERS = {'train': ('train_dataloader', 'val_dataloader'), 'test': ('test_dataloader',)}

MODULE = __name__


def check_datasets(cfg: Config, mode: str, config_name: str) -> None:
    """Raise :class:`PreflightError` listing every dataset problem
    (:func:`repseg.classification.data.dataset_problems`) of the loaders ``mode`` reads."""
    loaders = [n for n in LOADERS[mode] if cfg.get(n)  # val_cfg=dict() is a ValLoop
               and not (n == 'val_dataloader' and cfg.get('val_cfg') is None)]
    problems = data.dataset_problems(cfg, loaders, config_name)
    if problems:
        raise PreflightError('\n\n'.join(problems))


def prepare_classification_config(config, cfg_options: Optional[Mapping], work_dir,
                                  launcher: str, mode: str, skip_data_check: bool) -> Config:
    """Load and adapt ``config`` as the segmentation tools do (repseg's types are in
    mmpretrain's registries once :mod:`repseg.classification.model` is imported) and check
    its datasets, before the generic pre-flight, whose missing-folder help is Cityscapes'."""
    cfg = prepare_config(config, cfg_options, work_dir, launcher)
    imports = cfg.custom_imports
    imports['imports'] = list(dict.fromkeys([*imports['imports'], cls_model.__name__, MODULE]))
    if skip_data_check:
        cfg.skip_data_check = True
    check_datasets(cfg, mode, str(config))
    return cfg


# Per-image predictions and ONNX Runtime models -------------------------------------------

@METRICS.register_module()
class PredictionDump(BaseMetric):
    """Write each test image's label and top-k classes to ``out_file`` (JSON):
    ``[{"image": path, "label": i, "topk": [{"index": i, "prob": p}, ...]}, ...]``."""

    def __init__(self, out_file: str, topk: int = OUT_TOPK, **kwargs):
        super().__init__(**kwargs)
        self.out_file, self.topk = out_file, topk

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            probs, indices = sample['pred_score'].float().cpu().topk(
                min(self.topk, sample['pred_score'].numel()))
            label = sample.get('gt_label')
            self.results.append(dict(
                image=sample.get('img_path'),
                label=None if label is None else int(label[0]),
                topk=[dict(index=int(i), prob=round(float(p), 6))
                      for i, p in zip(indices, probs)]))

    def compute_metrics(self, results: list) -> dict:
        write_text_atomically(self.out_file, json.dumps(results, indent=1) + '\n')
        print_log(f'per-image predictions written to {self.out_file}', logger='current')
        return {}


@MODELS.register_module()
class OnnxRuntimeClassifier(BaseClassifier):
    """An mmpretrain classifier whose network is an ONNX Runtime session
    (:class:`repseg.onnx_backend.OnnxGraph`).

    The graph takes the batch as the test pipeline packs it (float32 N x 3 x H x W,
    pixel values 0-255 in mmcv's BGR order) and returns N x classes logits: the
    normalisation is inside the graph
    (:func:`repseg.classification.export.export_classifier_onnx`), so the data
    preprocessor only stacks the batch.
    """

    def __init__(self, onnx_file: str, threads: Optional[int] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type='ClsDataPreprocessor'),
                         init_cfg=init_cfg)
        self.graph = OnnxGraph(onnx_file, threads)

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor'):
        logits = torch.from_numpy(self.graph.run(inputs.detach().float().cpu().numpy()))
        if mode == 'tensor':
            return logits
        if mode != 'predict':
            raise InvalidArgumentError('an ONNX model cannot be trained; train the PyTorch '
                                       'model')
        scores = F.softmax(logits.float(), dim=1)
        samples = data_samples or [None] * len(scores)
        from mmpretrain.structures import DataSample

        out = []
        for sample, score in zip(samples, scores):
            sample = sample if sample is not None else DataSample()
            out.append(sample.set_pred_score(score).set_pred_label(score.argmax(keepdim=True)))
        return out

    def extract_feat(self, inputs):
        raise NotImplementedError('an ONNX Runtime classifier exposes no features')


# Test -----------------------------------------------------------------------------------

def checked_classifier_weights(cfg: Config, checkpoint) -> dict:
    """The state dict of ``cfg``'s classifier with ``checkpoint`` loaded strictly, built on
    the CPU before the Runner, so that a checkpoint that does not fit fails at once
    (naming the arch it looks like)."""
    return cls_model.build_classifier(cfg, checkpoint).state_dict()


def run_test(config, checkpoint, work_dir: Optional[str] = None, out: Optional[str] = None,
             fp16: bool = False, cfg_options: Optional[Mapping] = None, launcher: str = 'none',
             skip_data_check: bool = False, fuse: bool = True, bf16: bool = False) -> dict:
    """``tools/test.py`` for a classification config: top-1 and top-5 (mmpretrain's
    ``Accuracy``), written to ``<work_dir>/metrics.json`` as ``accuracy/top1`` and
    ``accuracy/top5`` on rank 0, with the images and the seconds of the whole test loop
    (loading, model and metric: compare with ``tools/benchmark.py --cls``).

    Args:
        checkpoint: classifier weights of any layout or an ``.onnx`` model
            (:class:`OnnxRuntimeClassifier`).
        out: a folder to write ``predictions.json`` into (:class:`PredictionDump`).
        fuse: fuse every RepVGG block first (the same predictions, faster).
        fp16, bf16: run in float16 / bfloat16 (:func:`repseg.inference.prepare_for_inference`).
    """
    half_precision_dtype(fp16, bf16)  # the pair is refused before anything is built
    onnx = is_onnx_file(checkpoint)
    cfg = prepare_classification_config(config, cfg_options, work_dir, launcher, 'test',
                                        skip_data_check)
    cfg.load_from = None  # loaded by checked_classifier_weights, strictly
    if onnx:
        if launcher != 'none':
            raise PreflightError(f'{checkpoint}: an ONNX model is tested in one process on the '
                                 'CPU; drop --launcher (tools/dist_test.sh)')
        refuse_precision_flags(checkpoint, fp16, bf16)
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f'ONNX model not found: {checkpoint}')
        cfg.model = dict(type=OnnxRuntimeClassifier.__name__, onnx_file=str(checkpoint))
        cfg.data_preprocessor = dict(type='ClsDataPreprocessor')
    if out:
        evaluator = cfg.test_evaluator
        metrics = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
        cfg.test_evaluator = [*metrics, dict(type=PredictionDump.__name__,
                                             out_file=str(Path(out) / PREDICTIONS_FILE))]
    preflight(cfg, 'test', str(config))
    weights = None if onnx else checked_classifier_weights(cfg, checkpoint)
    seg_runner.init_distributed(launcher)
    runner = seg_runner.build_runner(cfg)
    if weights is not None:
        model = segmentor_of(runner.model)
        model.load_state_dict(weights)
        del weights
        seg_runner.prepare_for_test(model, fuse, fp16, bf16)
    start = time.perf_counter()
    with seg_runner.frame_failures_named(runner):
        metrics = dict(runner.test())
    seconds = time.perf_counter() - start
    if runner.rank == 0:
        path = Path(runner.work_dir) / seg_runner.METRICS_FILE
        record = dict(config=str(config), checkpoint=str(checkpoint), fp16=fp16, bf16=bf16,
                      fused=None if onnx else fuse,
                      backend='onnxruntime' if onnx else 'pytorch',
                      images=len(runner.test_dataloader.dataset),
                      test_seconds=round(seconds, 3),  # loading, model and metric
                      **{k: round(float(v), 4) for k, v in metrics.items()})
        write_text_atomically(path, json.dumps(record, indent=2) + '\n')
        summary = '  '.join(f'{k} {float(v):.2f}' for k, v in metrics.items())
        print_log(f'{summary}; metrics written to {path}', logger='current')
    return metrics


# Train ----------------------------------------------------------------------------------

def run_train(config, work_dir: Optional[str] = None, resume: bool = False, amp: bool = False,
              cfg_options: Optional[Mapping] = None, launcher: str = 'none',
              skip_data_check: bool = False, tensorboard: bool = False):
    """``tools/train.py`` for a classification config: the dataset checks here, then
    :func:`repseg.mmseg.runner.run_train` (pre-flight, guards, resume, AMP, TensorBoard).
    Returns the Runner."""
    prepare_classification_config(config, cfg_options, work_dir, launcher, 'train',
                                  skip_data_check)
    return seg_runner.run_train(config, work_dir=work_dir, resume=resume, amp=amp,
                                cfg_options=cfg_options, launcher=launcher,
                                skip_data_check=skip_data_check, tensorboard=tensorboard)
