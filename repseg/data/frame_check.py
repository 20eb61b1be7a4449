"""Every image/label pair decoded and checked before a run, in parallel, with a cache.

A corrupt PNG or a label holding 50 at frame 2,000 otherwise stops a Cityscapes run in
hour 3 (``IndexError: Target 50 is out of bounds``, naming no file), after the GPUs have
been paid for. Decoding all pairs takes about a minute on a few cores, so it runs once:
each pair that passes is remembered in a cache file keyed by both files' (path, size,
mtime), and a later run decodes only new or changed pairs.

The conditions are those of mmseg's loaders: the image decodes and has 3 channels after
``LoadImageFromFile``'s ``color_type`` conversion; the label decodes as one 8-bit channel
(``LoadAnnotations`` casts to uint8, so a 16-bit label would silently wrap), has the
image's size and holds only ``0..num_classes-1`` and the ignore index.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np
from mmengine.logging import print_log
from tqdm import tqdm

from ..fileio import write_text_atomically

#: Written into each cache file; a file without it (or another version) is ignored.
CACHE_FORMAT = 'repseg-frame-check-1'
#: Below this many pairs to decode, worker processes cost more than they save.
MIN_PAIRS_PER_WORKER = 16
#: ``LoadImageFromFile(color_type=...)`` -> the OpenCV flag mmcv decodes with.
COLOR_TYPE_FLAGS = {
    'color': cv2.IMREAD_COLOR,
    'grayscale': cv2.IMREAD_GRAYSCALE,
    'unchanged': cv2.IMREAD_UNCHANGED,
    'color_ignore_orientation': cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR,
    'grayscale_ignore_orientation': cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_GRAYSCALE,
}
#: Largest trainId the labelIds hint applies to (Cityscapes labelIds run 0..33).
LABEL_ID_MAX = 33


@dataclass(frozen=True)
class FrameRules:
    """What a frame must satisfy; part of the cache key (other rules, other verdicts)."""

    num_classes: int = 19
    ignore_index: int = 255
    color_type: str = 'color'
    channels: int = 3

    def __post_init__(self):
        if self.color_type not in COLOR_TYPE_FLAGS:
            raise ValueError(f'unknown color_type {self.color_type!r}; '
                             f"choose from {', '.join(COLOR_TYPE_FLAGS)}")


@dataclass
class FrameReport:
    """The outcome of :func:`check_frames`: one line per bad pair, and how much was done."""

    problems: list
    total: int
    decoded: int
    from_cache: int
    seconds: float


def default_cache_dir() -> Path:
    """``$REPSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/repseg``, else ``~/.cache/repseg``."""
    if os.environ.get('REPSEG_CACHE_DIR'):
        return Path(os.environ['REPSEG_CACHE_DIR'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'repseg'


def cache_file(cache_dir, img_dir, ann_dir, suffixes: Sequence[str], rules: FrameRules) -> Path:
    """The cache file of one split under ``cache_dir``: one file per folder pair, suffixes
    and rules, so that splits and configs never share verdicts."""
    key = json.dumps([str(Path(img_dir).resolve()), str(Path(ann_dir).resolve()),
                      list(suffixes), asdict(rules)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache_dir) / 'frame_check' / f'{digest}.json'


def label_problem(seg: np.ndarray, label, rules: FrameRules) -> Optional[str]:
    """Why the decoded label ``seg`` (a file named ``label``) cannot train, or None.

    Shared by the pre-flight and by the loaders that guard a run
    (:mod:`repseg.mmseg.frame_guard`).
    """
    if seg.ndim != 2:
        return (f"label '{label}' has {seg.shape[2]} channels; expected a single-channel PNG "
                'of trainIds (a colour-coded label?)')
    if seg.dtype != np.uint8:
        return (f"label '{label}' is {seg.dtype.itemsize * 8}-bit ({seg.dtype}); expected "
                "8-bit trainIds (mmseg's LoadAnnotations casts labels to uint8, so larger "
                'values would silently wrap)')
    values = np.flatnonzero(np.bincount(seg.ravel(), minlength=1))
    bad = [int(v) for v in values if v >= rules.num_classes and v != rules.ignore_index]
    if not bad:
        return None
    hint = ''
    if max(bad) <= LABEL_ID_MAX:
        hint = (' These look like Cityscapes labelIds: use the *_gtFine_labelTrainIds.png '
                'files (run `python tools/prepare_cityscapes.py DATA_ROOT`).')
    return (f"label '{label}' holds values {bad} outside 0..{rules.num_classes - 1} and the "
            f'ignore index {rules.ignore_index}.{hint}')


def channels_problem(image: np.ndarray, img, color_type: str,
                     channels: int) -> Optional[str]:
    """Why the decoded ``image`` (a file named ``img``) lacks ``channels`` channels, or
    None (shared with :mod:`repseg.mmseg.frame_guard`, like the two below)."""
    found = 1 if image.ndim == 2 else image.shape[2]
    if found == channels:
        return None
    return (f"image '{img}' has {found} channel(s) after loading with "
            f"color_type='{color_type}'; expected {channels}")


def size_problem(img, image_hw: Sequence[int], label, label_hw: Sequence[int]) -> Optional[str]:
    """Why an image of ``image_hw`` (H, W) and its label of ``label_hw`` do not pair."""
    if tuple(image_hw[:2]) == tuple(label_hw[:2]):
        return None
    return (f"image '{img}' is {image_hw[1]}x{image_hw[0]} (WxH) but its label "
            f"'{label}' is {label_hw[1]}x{label_hw[0]}")


def frame_problem(img, label, rules: FrameRules) -> Optional[str]:
    """Decode one image/label pair as mmseg's loaders would; why it fails, or None.
    ``label`` None checks the image alone (a classification image)."""
    image = cv2.imread(str(img), COLOR_TYPE_FLAGS[rules.color_type])
    if image is None:
        return f"cannot read image '{img}': not a readable image (corrupt or truncated file?)"
    problem = channels_problem(image, img, rules.color_type, rules.channels)
    if problem or label is None:
        return problem
    seg = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    if seg is None:
        return f"cannot read label '{label}': not a readable image (corrupt or truncated file?)"
    return label_problem(seg, label, rules) or size_problem(img, image.shape, label, seg.shape)


def _check_pair(job) -> Optional[str]:
    return frame_problem(*job)


def _quiet_opencv() -> None:
    """Worker initializer: one OpenCV thread per process (the processes are the parallelism)."""
    cv2.setNumThreads(1)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _stamp(img: Path, label: Optional[Path]) -> Optional[list]:
    """What the cache compares: both files' size and mtime (None if one is missing; a
    missing ``label`` counts as 0, 0)."""
    try:
        a = img.stat()
        b = label.stat() if label is not None else None
    except OSError:
        return None
    return [a.st_size, a.st_mtime_ns, b.st_size if b else 0, b.st_mtime_ns if b else 0]


def _read_cache(path: Optional[Path], rules: FrameRules) -> dict:
    """Passed pairs recorded in ``path``; an unreadable, foreign or corrupt file gives {}."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        passed = data['passed']
        valid = (data.get('format') == CACHE_FORMAT and data.get('rules') == asdict(rules)
                 and isinstance(passed, dict)
                 and all(isinstance(v, list) and len(v) == 4 for v in passed.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        print_log(f'frame check: ignoring the cache {path} (not a repseg frame-check cache '
                  'for these rules); every frame is decoded again', logger='current')
        return {}
    return passed


def _write_cache(path: Path, rules: FrameRules, passed: dict) -> None:
    try:
        write_text_atomically(path, json.dumps(
            dict(format=CACHE_FORMAT, rules=asdict(rules), passed=passed)))
    except OSError as error:  # a read-only home must not stop a run
        print_log(f'frame check: could not write the cache {path} ({error}); the next run '
                  'decodes every frame again', logger='current', level=30)


def _decode(jobs: list, rules: FrameRules, workers: Optional[int], progress: bool,
            desc: str) -> list:
    """Problems (or None) of each ``(img, label)`` job, in order."""
    if workers is None:
        workers = min(available_cpus(), max(1, len(jobs) // MIN_PAIRS_PER_WORKER))
    jobs = [(img, label, rules) for img, label in jobs]
    bar = dict(total=len(jobs), desc=desc, unit='frame', disable=not progress or not jobs)
    if workers <= 1:
        return [_check_pair(job) for job in tqdm(jobs, **bar)]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context('fork' if 'fork' in methods else None)
    chunksize = max(1, min(32, len(jobs) // (workers * 8)))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_quiet_opencv) as pool:
        return list(tqdm(pool.map(_check_pair, jobs, chunksize=chunksize), **bar))


def check_frames(pairs: Iterable[tuple], rules: FrameRules = FrameRules(),
                 cache: Optional[Path] = None, root: Optional[Path] = None,
                 workers: Optional[int] = None, progress: bool = True,
                 desc: str = 'checking frames') -> FrameReport:
    """Check every ``(image, label)`` pair; return all problems at once.

    Args:
        pairs: image and label paths (label None: the image alone).
        rules: what a frame must satisfy.
        cache: cache file (see :func:`cache_file`); pairs recorded there with the same
            sizes and mtimes are not decoded again; the passes of this call are added.
            None: no cache.
        root: cache entries are stored relative to this folder (default: as given).
        workers: processes decoding in parallel; None: up to the available CPUs, one per
            :data:`MIN_PAIRS_PER_WORKER` pairs to decode.
        progress: show a tqdm bar and log a summary line.
        desc: label of the bar.
    """
    start = time.perf_counter()
    pairs = [(Path(img), None if label is None else Path(label)) for img, label in pairs]
    cached = _read_cache(cache, rules)
    passed, pending = {}, []
    for img, label in pairs:
        key = str(img.relative_to(root)) if root else str(img)
        stamp = _stamp(img, label)
        if stamp is not None and cached.get(key) == stamp:
            passed[key] = stamp
        else:
            pending.append((key, img, label, stamp))
    from_cache = len(passed)
    verdicts = _decode([(img, label) for _, img, label, _ in pending], rules, workers,
                       progress, desc)
    problems = []
    for (key, _, _, stamp), problem in zip(pending, verdicts):
        if problem:
            problems.append(problem)
        elif stamp is not None:
            passed[key] = stamp
    if cache is not None and pending:
        _write_cache(cache, rules, passed)
    report = FrameReport(problems, len(pairs), len(pending), from_cache,
                         time.perf_counter() - start)
    if progress:
        print_log(f'{desc}: {report.total} frames, {report.from_cache} known good from the '
                  f'cache, {report.decoded} decoded, {len(problems)} bad '
                  f'({report.seconds:.1f} s)', logger='current')
    return report
