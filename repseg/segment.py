"""Segment images, folders and videos with a trained segmentor: the library of
``tools/infer.py``.

Inputs are image files, folders (searched recursively) and video files. Every image is
run through the config's own test pipeline (its resize, if any; predictions come back at
the input's size), same-size images are batched, and three files are written per image:
``<stem>_mask.png`` (Cityscapes colours), ``<stem>_overlay.png`` (mask over the image) and
``<stem>_trainIds.png`` (raw labels). A video gives ``<stem>_mask.avi`` and
``<stem>_overlay.avi`` (MJPG). A file that cannot be decoded is reported and skipped; the
run goes on.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log
from tqdm import tqdm

from .data.cityscapes_layout import PALETTE
from .errors import InvalidArgumentError, OutputExistsError, first_few
from .fileio import check_output_location, claim_outputs

IMAGE_SUFFIXES = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp',
                            '.ppm', '.pgm', '.jp2'})
VIDEO_SUFFIXES = frozenset({'.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg',
                            '.mpeg', '.wmv'})
VIDEO_FOURCC = 'MJPG'
#: Files written per image and per video: ``<out_stem><suffix>``.
IMAGE_OUTPUTS = ('_mask.png', '_overlay.png', '_trainIds.png')
VIDEO_OUTPUTS = ('_mask.avi', '_overlay.avi')
#: Skipped files named in the summary line (each is also reported when it is skipped).
SHOWN_SKIPPED = 5
#: Why a file was skipped (tools/infer.py and tools/classify.py say it alike).
UNREADABLE_IMAGE = 'not a readable image (corrupt, truncated or of an unknown type)'
UNREADABLE_VIDEO = 'not a readable video (no frame could be decoded)'


class InputError(InvalidArgumentError):
    """An input path that does not exist or holds nothing to segment."""


@dataclass(frozen=True)
class Source:
    """One input file and where its outputs go (``out_stem`` + ``_mask.png`` ...)."""

    path: Path
    is_video: bool
    out_stem: Path


@dataclass
class Summary:
    """What :func:`segment_sources` (or :func:`repseg.classify`) did."""

    images: int = 0
    frames: int = 0
    skipped: list = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0

    def line(self) -> str:
        done = self.images + self.frames
        per_image = self.seconds / done if done else float('nan')
        text = f'done: {self.images} images'
        if self.frames:
            text += f' and {self.frames} video frames'
        text += f'; skipped: {len(self.skipped)}'
        if self.skipped:
            text += f' ({first_few((path for path, _ in self.skipped), SHOWN_SKIPPED)})'
        return text + f'; {per_image:.3f} s per image'

    def skip(self, path, reason: str, write: Callable[[str], None] = print) -> None:
        """Record ``path`` as skipped and say so at once, in one line (``write``: tqdm's
        while a progress bar is shown)."""
        self.skipped.append((path, reason))
        write(f'skipped {path}: {reason}')


def collect_sources(inputs: Sequence, out_dir) -> list[Source]:
    """Expand files and folders (recursively) into :class:`Source` items.

    A folder's files keep their relative paths below ``out_dir``; a file given directly
    goes to ``out_dir/<stem>``. Clashing output names get ``_2``, ``_3``, ... Files of other
    types inside folders are ignored; a file given directly is tried as an image unless
    its suffix is a video's.

    Raises:
        InputError: a path does not exist, or nothing to segment was found.
    """
    out_dir = Path(out_dir)
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise InputError(f"input not found: {', '.join(missing)}")
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob('*') if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            found += [(p, p.relative_to(item).with_suffix('')) for p in files]
        else:
            found.append((item, Path(item.stem)))
    if not found:
        raise InputError(f"no images or videos found in {', '.join(map(str, inputs))} "
                         f"(image types: {', '.join(sorted(IMAGE_SUFFIXES))}; video types: "
                         f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    sources, used = [], set()
    for path, rel in found:
        stem, n = rel, 1
        while stem in used:
            n += 1
            stem = rel.with_name(f'{rel.name}_{n}')
        used.add(stem)
        sources.append(Source(path, path.suffix.lower() in VIDEO_SUFFIXES, out_dir / stem))
    return sources


def planned_outputs(sources: Sequence[Source]) -> list[Path]:
    """Every file :func:`segment_sources` writes for ``sources``."""
    return [Path(f'{source.out_stem}{suffix}') for source in sources
            for suffix in (VIDEO_OUTPUTS if source.is_video else IMAGE_OUTPUTS)]


def claim_segment_outputs(sources: Sequence[Source], force: bool) -> None:
    """Apply the overwrite rule (:func:`repseg.fileio.claim_outputs`) to the outputs of
    ``sources``; an output that is also an input (an earlier run's outputs segmented
    again into the same folder) is refused even with ``force``."""
    outputs = planned_outputs(sources)
    clashes = {p.resolve() for p in outputs} & {s.path.resolve() for s in sources}
    if clashes:
        raise OutputExistsError(
            f'{len(clashes)} output file(s) would replace input images, e.g. '
            f'{sorted(clashes)[0]}: the inputs include the outputs of an earlier run in '
            'the same --out-dir. Choose an --out-dir outside the input folders')
    claim_outputs(outputs, force, 'another --out-dir')


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]] = PALETTE) -> np.ndarray:
    """An ``H x W x 3`` BGR image of trainIds in ``palette`` (RGB) colours; black elsewhere."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(palette)] = np.asarray(palette, np.uint8)[:, ::-1]
    return lut[labels]


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float) -> np.ndarray:
    """Blend a colour mask over a BGR image (``opacity`` 0: image only, 1: mask only)."""
    return cv2.addWeighted(image, 1.0 - opacity, mask, opacity, 0.0)


class Segmenter:
    """Runs a segmentor on BGR ``uint8`` images through its config's test pipeline.

    Args:
        model: an mmseg segmentor in eval mode with ``model.cfg`` set (as
            :func:`load_segmentor` returns it).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.pipeline = image_pipeline(model.cfg)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``H x W`` uint8 trainId maps of same-size BGR images."""
        batch = dict(inputs=[], data_samples=[])
        for image in images:
            item = self.pipeline(dict(img=image))
            batch['inputs'].append(item['inputs'])
            batch['data_samples'].append(item['data_samples'])
        samples = self.model.test_step(batch)
        return [s.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8) for s in samples]


def _test_pipeline(cfg) -> list:
    if cfg.get('test_pipeline'):
        return cfg.test_pipeline
    return cfg.test_dataloader.dataset.pipeline


def image_pipeline(cfg):
    """The config's test pipeline for BGR ``uint8`` arrays (``dict(img=array)``): the
    image is not loaded from a file and no label is read; resizing and packing stay."""
    from mmengine.dataset import Compose
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    steps = copy.deepcopy(_test_pipeline(cfg))
    steps = [s for s in steps if s.get('type') != 'LoadAnnotations']
    if steps and steps[0].get('type') == 'LoadImageFromFile':
        steps[0] = dict(type='LoadImageFromNDArray')
    return Compose(steps)


def load_segmentor(config, checkpoint, device: str = 'cpu', fp16: bool = False,
                   fuse: bool = True, bf16: bool = False) -> nn.Module:
    """Build the segmentor of ``config``, load ``checkpoint``, prepare it for inference.

    Train-time and fused (``tools/deploy.py``) checkpoints both load: with their training
    config, with a ``*_deploy.py`` config (train-time weights fuse on load). With ``fuse``
    RepVGG blocks are fused (the same predictions, faster); with ``fp16`` (``bf16``) the
    model is cast to float16 (bfloat16). An ``.onnx`` checkpoint (fp32 or INT8) runs in
    ONNX Runtime on the CPU (:mod:`repseg.onnx_backend`). Returns the model in eval mode.
    """
    from .inference import half_precision_dtype, prepare_for_inference
    from .mmseg.builder import build_segmentor, load_config
    from .onnx_backend import is_onnx_file, load_onnx_segmentor, refuse_precision_flags

    if not Path(config).is_file():
        raise InputError(f'config file not found: {config}')
    half_dtype = half_precision_dtype(fp16, bf16)
    cfg = load_config(config)
    if is_onnx_file(checkpoint):
        from mmseg.utils import register_all_modules

        refuse_precision_flags(checkpoint, fp16, bf16)
        # Its data preprocessor is an mmseg type: in a fresh process (tools/infer.py)
        # nothing has set mmseg's default scope yet, build_segmentor does it for .pth.
        register_all_modules(init_default_scope=True)
        return load_onnx_segmentor(cfg, checkpoint)
    model = build_segmentor(cfg, checkpoint, 'cpu')
    prepare_for_inference(model, fuse=fuse, fp16=half_dtype is not None,
                          half_dtype=half_dtype or torch.float16)
    return model.to(device)


def _batches(sources: Iterable[Source], batch_size: int, summary: Summary,
             bar: tqdm) -> Iterator[list[tuple[Source, np.ndarray]]]:
    """Read images and group consecutive same-size ones; unreadable files are recorded
    in ``summary.skipped`` and reported."""
    pending: list[tuple[Source, np.ndarray]] = []
    for source in sources:
        image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
        if image is None:
            summary.skip(source.path, UNREADABLE_IMAGE, bar.write)
            bar.update()
            continue
        if pending and (len(pending) == batch_size or pending[0][1].shape != image.shape):
            yield pending
            pending = []
        pending.append((source, image))
    if pending:
        yield pending


def _write_image_outputs(source: Source, image: np.ndarray, labels: np.ndarray,
                         palette, opacity: float) -> None:
    source.out_stem.parent.mkdir(parents=True, exist_ok=True)
    mask = colorize(labels, palette)
    arrays = (mask, overlay(image, mask, opacity), labels)
    for suffix, array in zip(IMAGE_OUTPUTS, arrays):
        path = f'{source.out_stem}{suffix}'
        if not cv2.imwrite(path, array):
            raise OSError(f'could not write {path}')


def _segment_video(segmenter: Segmenter, source: Source, batch_size: int, palette,
                   opacity: float, summary: Summary, progress: bool) -> None:
    capture = cv2.VideoCapture(str(source.path))
    first_ok, frame = capture.read() if capture.isOpened() else (False, None)
    if not first_ok:
        capture.release()
        summary.skip(source.path, UNREADABLE_VIDEO, tqdm.write)
        return
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    height, width = frame.shape[:2]
    source.out_stem.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC)
    writers = {kind: cv2.VideoWriter(f'{source.out_stem}{suffix}', fourcc, fps, (width, height))
               for kind, suffix in zip(('mask', 'overlay'), VIDEO_OUTPUTS)}
    start = time.perf_counter()
    with tqdm(total=total, desc=source.path.name, unit='frame', disable=not progress) as bar:
        frames = [frame]
        while frames:
            while len(frames) < batch_size:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(frame)
            for image, labels in zip(frames, segmenter(frames)):
                mask = colorize(labels, palette)
                writers['mask'].write(mask)
                writers['overlay'].write(overlay(image, mask, opacity))
                summary.frames += 1
            bar.update(len(frames))
            ok, frame = capture.read()
            frames = [frame] if ok else []
    capture.release()
    for writer in writers.values():
        writer.release()
    summary.seconds += time.perf_counter() - start


def segment_sources(segmenter: Segmenter, sources: Sequence[Source], batch_size: int = 1,
                    opacity: float = 0.5, progress: bool = True) -> Summary:
    """Segment every source, writing its outputs (see the module docstring).

    Returns a :class:`Summary`; ``seconds`` covers reading, inference and writing.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f'batch size must be at least 1, got {batch_size}')
    if not 0.0 <= opacity <= 1.0:
        raise InvalidArgumentError(f'opacity must be in [0, 1], got {opacity}')
    palette = segmenter.model.dataset_meta.get('palette') or PALETTE
    summary = Summary()
    images = [s for s in sources if not s.is_video]
    if images:
        start = time.perf_counter()
        with tqdm(total=len(images), desc='images', unit='img', disable=not progress) as bar:
            for batch in _batches(images, batch_size, summary, bar):
                labels = segmenter([image for _, image in batch])
                for (source, image), label_map in zip(batch, labels):
                    _write_image_outputs(source, image, label_map, palette, opacity)
                summary.images += len(batch)
                bar.update(len(batch))
        summary.seconds += time.perf_counter() - start
    for source in sources:
        if source.is_video:
            _segment_video(segmenter, source, batch_size, palette, opacity, summary, progress)
    print_log(summary.line(), logger='current')
    return summary


def segment(config, checkpoint, inputs: Sequence, out_dir, device: Optional[str] = None,
            batch_size: int = 1, opacity: float = 0.5, fp16: bool = False,
            progress: bool = True, force: bool = False, bf16: bool = False) -> Summary:
    """``tools/infer.py``: load the model, segment ``inputs``, write to ``out_dir``.

    Existing outputs are replaced only with ``force`` (:func:`claim_segment_outputs`);
    the inputs, the output folder and the device are checked before the model is
    loaded. Raises :class:`InputError` if no input could be decoded.
    """
    from .inference import check_device

    check_output_location(out_dir, is_folder=True, what='--out-dir')
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    check_device(device)
    sources = collect_sources(inputs, out_dir)
    claim_segment_outputs(sources, force)
    model = load_segmentor(config, checkpoint, device, fp16, bf16=bf16)
    summary = segment_sources(Segmenter(model), sources, batch_size, opacity, progress)
    if not summary.images + summary.frames:
        raise InputError(f'none of the {len(sources)} inputs could be decoded (each is '
                         'reported above); give readable images or videos')
    return summary
