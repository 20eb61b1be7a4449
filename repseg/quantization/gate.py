"""INT8 that keeps its accuracy: quantize, check against fp32, keep the costly layers float.

:func:`quantize_segmentor` is ``tools/quantize.py``:

1. build the segmentor, export it fused to ONNX (:func:`repseg.export.export_onnx`; a
   fixed input size with ``shape``, else dynamic) and check the export against PyTorch;
2. pre-process and quantize it statically (:mod:`repseg.quantization.qdq`), calibrated on
   ``num_calib`` images read through the config's test pipeline
   (:mod:`repseg.quantization.data`);
3. the gate (:mod:`repseg.quantization.accuracy`): with the config's val split at hand,
   the mIoU of fp32 and INT8 through ONNX Runtime, and the drop must be at most
   ``max_drop`` points; without labels, the INT8 model must predict at least
   ``min_agreement`` percent of the pixels of the calibration-excluded images as the fp32
   model does;
4. if the gate fails, the sensitivity step: every quantized conv is kept in float alone,
   and scored by the pixel agreement it gives back on a few probe images; then the most
   damaging ones are kept in float, one more at a time (at most ``max_float``), until
   the gate passes.

The INT8 model is written (atomically) only when it passed, or with ``save_failed``; a
report (``<out stem>.json``) is written either way, and a failed gate raises
:class:`GateFailure` with the measured numbers.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import onnx
from mmengine.config import Config
from mmengine.logging import print_log
from tqdm import tqdm

from ..errors import UserError
from ..fileio import write_atomically, write_text_atomically
from . import data as calib_data
from . import qdq
from .accuracy import AccuracyCheck, Scores

PathLike = Union[str, os.PathLike]

#: Images the sensitivity step scores each kept-in-float candidate on.
PROBE_IMAGES = 4
#: Report written next to the INT8 model: ``<stem>`` + this.
REPORT_SUFFIX = '.json'


@dataclass(frozen=True)
class GateSettings:
    """The accuracy gate and the sensitivity step."""

    max_drop: float = 1.0          # mIoU points (val split with labels)
    min_agreement: float = 98.0    # percent of pixels (held-out images, no labels)
    max_float: int = 8             # layers the sensitivity step may keep in float
    probe_images: int = PROBE_IMAGES

    def __post_init__(self):
        if not 0.0 <= self.min_agreement <= 100.0:
            raise ValueError(f'min_agreement is a percentage, got {self.min_agreement}')
        if self.max_float < 0 or self.probe_images < 1:
            raise ValueError('need max_float >= 0 and probe_images >= 1')


class QuantizeInputError(UserError, ValueError):
    """A quantization request that cannot run as given."""


class GateFailure(UserError, RuntimeError):
    """The INT8 model failed its accuracy gate; ``report`` holds the measurements."""

    def __init__(self, message: str, report: 'QuantReport'):
        super().__init__(message)
        self.report = report


@dataclass
class QuantReport:
    """What :func:`quantize_segmentor` measured and decided (also its JSON report)."""

    config: str
    checkpoint: Optional[str]
    out: str
    settings: dict
    check: str                      # what the gate compared, in words
    gate: dict
    calibration_images: int
    shape: Optional[list]
    fp32: Scores
    int8_all_layers: Scores
    final: Scores
    passed: bool
    kept_float: list = field(default_factory=list)     # readable layer names
    sensitivity: list = field(default_factory=list)    # [layer, agreement when kept float]
    quantized_layers: int = 0
    written: bool = False
    seconds: float = 0.0

    @property
    def drop(self) -> Optional[float]:
        """mIoU points lost (fp32 - final), None without labels."""
        if self.fp32.miou is None or self.final.miou is None:
            return None
        return self.fp32.miou - self.final.miou

    def summary(self) -> str:
        lines = [f'check: {self.check}',
                 f'fp32 (ONNX Runtime): {self.fp32.describe()}',
                 f'INT8, all {self.quantized_layers} convs quantized: '
                 f'{self.int8_all_layers.describe()}']
        if self.kept_float:
            lines.append(f'kept in float ({len(self.kept_float)}): {", ".join(self.kept_float)}')
            lines.append(f'INT8 after the sensitivity step: {self.final.describe()}')
        verdict = 'passed' if self.passed else 'FAILED'
        lines.append(f'gate {verdict}: {self.gate_text()}')
        return '\n'.join(lines)

    def gate_text(self) -> str:
        if self.drop is not None:
            return (f'mIoU drop {self.drop:.2f} points (fp32 {self.fp32.miou:.2f}, INT8 '
                    f"{self.final.miou:.2f}; limit --max-drop {self.gate['max_drop']:g})")
        return (f'pixel agreement {self.final.agreement:.2f}% (limit --min-agreement '
                f"{self.gate['min_agreement']:g}%)")

    def to_dict(self) -> dict:
        record = asdict(self)
        record['drop'] = self.drop
        return record


def report_path(out: PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.stem + REPORT_SUFFIX)


def _passes(reference: Scores, scores: Scores, gate: GateSettings) -> bool:
    if reference.miou is not None and scores.miou is not None:
        return reference.miou - scores.miou <= gate.max_drop
    return scores.agreement >= gate.min_agreement


@dataclass
class _Data:
    calibration: Sequence
    check: Sequence
    with_labels: bool
    description: str


def _select_data(cfg: Config, calib: str, num_calib: int, config_name: str) -> _Data:
    """Calibration items and the items the gate checks on (see the module docstring)."""
    problems = calib_data.val_split_problems(cfg, config_name)
    val = None if problems else calib_data.val_split(cfg)
    if calib == calib_data.VAL_SPLIT:
        if val is None:
            raise QuantizeInputError(
                f"--calib {calib_data.VAL_SPLIT}: the config's val split cannot be read:\n\n"
                + '\n\n'.join(problems) + '\n\nOr calibrate on a folder of images: '
                '--calib FOLDER')
        source = val
    else:
        source = calib_data.folder_images(cfg, calib)
    calibration = calib_data.Subset(source, 0, num_calib)
    if val is not None and len(val):
        return _Data(calibration, val, True,
                     f"mIoU on the config's val split ({len(val)} images)")
    held_out = calib_data.Subset(source, num_calib)
    if not len(held_out):
        raise QuantizeInputError(
            f'--calib {calib}: all {len(source)} images are used for calibration '
            f'(--num-calib {num_calib}), none is left to check the INT8 model on, and the '
            "config's val split cannot be read. Give a smaller --num-calib or more images.")
    return _Data(calibration, held_out, False,
                 f'pixel agreement on {len(held_out)} calibration-excluded images of {calib}')


def _export(model, folder: Path, shape, example_item) -> Path:
    """The fused fp32 export, checked against PyTorch on a calibration image: the labels
    must agree (logits of a trained model can be large, so their absolute difference is
    not the measure here)."""
    from ..export import (LABELS_MIN_AGREEMENT, OnnxVerificationError, export_onnx,
                          verify_onnx)

    path = folder / 'fp32.onnx'
    image_shape = tuple(shape) if shape else calib_data.first_shape([example_item])
    wrapper = export_onnx(model, path, image_shape, dynamic=shape is None)
    image = calib_data.image_batch(example_item, shape)[0].transpose(1, 2, 0)
    check = verify_onnx(path, wrapper, image.round().clip(0, 255).astype('uint8'))
    if check.label_agreement < LABELS_MIN_AGREEMENT:
        raise OnnxVerificationError(f'the fp32 ONNX export labels only '
                                    f'{100 * check.label_agreement:.2f}% of the pixels as '
                                    f'PyTorch does: {check}')
    return path


def _rank_layers(check: AccuracyCheck, int8, fp32, candidates: Sequence[str],
                 gate: GateSettings, progress: bool) -> list[tuple[str, float]]:
    """Each candidate kept in float alone, scored by agreement on the probe images;
    most damaging (highest agreement when float) first."""
    scored = []
    for index, node in enumerate(tqdm(candidates, desc='sensitivity (one layer float)',
                                      unit='layer', disable=not progress)):
        model = qdq.keep_in_float(int8, fp32, [node]).SerializeToString()
        scores = check.score(model, limit=gate.probe_images, desc=None)
        scored.append((index, node, scores.agreement))
    scored.sort(key=lambda item: (-item[2], item[0]))
    return [(node, agreement) for _, node, agreement in scored]


def quantize_segmentor(config: PathLike, checkpoint: Optional[PathLike], out: PathLike,
                       calib: str, num_calib: int = 16,
                       settings: qdq.QuantSettings = qdq.QuantSettings(),
                       gate: GateSettings = GateSettings(),
                       shape: Optional[Sequence[int]] = None, threads: Optional[int] = None,
                       cfg_options: Optional[dict] = None, save_failed: bool = False,
                       progress: bool = True) -> QuantReport:
    """Quantize a segmentor to INT8 and gate it on accuracy (see the module docstring).

    Returns the report of a passed gate; raises :class:`GateFailure` otherwise.
    """
    from ..mmseg.builder import build_segmentor, load_config

    start = time.perf_counter()
    if num_calib < 1:
        raise QuantizeInputError(f'--num-calib must be at least 1, got {num_calib}')
    if shape is not None and (len(shape) != 2 or min(shape) < 8):
        raise QuantizeInputError(f'--shape must be H W, both >= 8, got {list(shape)}')
    if not Path(config).is_file():
        raise QuantizeInputError(f'config file not found: {config}')
    cfg = load_config(config, cfg_options)
    data = _select_data(cfg, calib, num_calib, str(config))
    model = build_segmentor(cfg, checkpoint)
    print_log(f'INT8: {settings.describe()}; calibration on {len(data.calibration)} images; '
              f'gate: {data.description}', logger='current')
    with tempfile.TemporaryDirectory(prefix='repseg_int8_') as tmp:
        folder = Path(tmp)
        fp32_path = _export(model, folder, shape, data.calibration[0])
        del model
        qdq.preprocess(fp32_path, folder / 'pre.onnx')
        reader = calib_data.ImageReader(data.calibration, shape=shape)
        qdq.quantize(folder / 'pre.onnx', folder / 'int8.onnx', reader, settings)
        fp32_bytes = fp32_path.read_bytes()
        fp32 = qdq.load(folder / 'pre.onnx')
        int8 = qdq.load(folder / 'int8.onnx')
    check = AccuracyCheck(cfg, data.check, data.with_labels, threads, progress)
    reference = check.reference(fp32_bytes)
    del fp32_bytes
    int8_scores = check.score(int8.SerializeToString())
    candidates = qdq.quantized_convs(int8)
    names = qdq.layer_names(fp32, candidates)
    print_log(f'fp32 {reference.describe()}; INT8 {int8_scores.describe()}', logger='current')
    report = QuantReport(
        config=str(config), checkpoint=None if checkpoint is None else str(checkpoint),
        out=str(out), settings=settings.to_dict(), check=data.description,
        gate=asdict(gate), calibration_images=len(data.calibration),
        shape=None if shape is None else list(shape), fp32=reference,
        int8_all_layers=int8_scores, final=int8_scores,
        passed=_passes(reference, int8_scores, gate), quantized_layers=len(candidates))
    final_model = int8
    if not report.passed and gate.max_float > 0:
        ranking = _rank_layers(check, int8, fp32, candidates, gate, progress)
        report.sensitivity = [[names[node], round(score, 3)] for node, score in ranking]
        for count in range(1, min(gate.max_float, len(ranking)) + 1):
            kept = [node for node, _ in ranking[:count]]
            final_model = qdq.keep_in_float(int8, fp32, kept)
            report.final = check.score(final_model.SerializeToString(),
                                       desc=f'{count} layers float')
            report.kept_float = [names[node] for node in kept]
            report.passed = _passes(reference, report.final, gate)
            print_log(f'{count} layer(s) in float: {report.final.describe()}',
                      logger='current')
            if report.passed:
                break
    if report.passed or save_failed:
        write_atomically(out, lambda tmp: onnx.save(final_model, tmp))
        report.written = True
    report.seconds = time.perf_counter() - start
    write_text_atomically(report_path(out), json.dumps(report.to_dict(), indent=2) + '\n')
    if not report.passed:
        kept = (f' after keeping {len(report.kept_float)} layer(s) in float'
                if report.kept_float else '')
        written = (f'written anyway to {out} (--save-failed)' if report.written
                   else f'{out} was not written')
        raise GateFailure(
            f'the INT8 model failed its accuracy gate{kept}: {report.gate_text()}; '
            f'{written}; report in {report_path(out)}. Try more calibration images '
            '(--num-calib), another --method (percentile, entropy), per-channel weights '
            '(the default, without --per-tensor), a larger --max-float, or a looser gate.',
            report)
    return report
