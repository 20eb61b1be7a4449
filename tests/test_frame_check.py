"""Every frame checked before a run (every bad file reported at once, decoded in worker
processes, verdicts cached per file), and a frame that fails anyway during the run named
together with the iteration."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from repseg.data import frame_check
from repseg.data.frame_check import FrameRules, cache_file, check_frames
from repseg.mmseg import preflight as preflight_module
from repseg.mmseg.config import prepare_config
from repseg.mmseg.frame_guard import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                                      FrameLoadError)
from repseg.mmseg.preflight import PreflightError, preflight
from repseg.mmseg.runner import run_train

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'
LABEL = 'gtFine/train/toycity/toycity_000000_{:06d}_gtFine_labelTrainIds.png'
IMAGE = 'leftImg8bit/train/toycity/toycity_000000_{:06d}_leftImg8bit.png'


def write_pairs(folder: Path, count: int = 6) -> list:
    """``count`` valid 16x32 image/label pairs; labels hold 0..18 and 255."""
    rng = np.random.default_rng(0)
    pairs = []
    for index in range(count):
        img, label = folder / f'{index}_img.png', folder / f'{index}_label.png'
        cv2.imwrite(str(img), rng.integers(0, 256, (16, 32, 3), np.uint8))
        seg = rng.integers(0, 19, (16, 32), np.uint8)
        seg[0, :4] = 255
        cv2.imwrite(str(label), seg)
        pairs.append((img, label))
    return pairs


def plant_bad_frames(pairs) -> dict:
    """Break five of the pairs, each its own way; returns the broken file's name and a
    phrase its report must hold."""
    img, _ = pairs[1]
    img.write_bytes(img.read_bytes()[:60])
    cv2.imwrite(str(pairs[2][1]), np.full((16, 32), 50, np.uint8))
    cv2.imwrite(str(pairs[3][1]), np.full((16, 32), 3, np.uint16))
    cv2.imwrite(str(pairs[4][1]), np.zeros((8, 32), np.uint8))
    cv2.imwrite(str(pairs[5][1]), np.zeros((16, 32, 3), np.uint8))
    return {
        pairs[1][0].name: 'not a readable image (corrupt or truncated file?)',
        pairs[2][1].name: 'holds values [50] outside 0..18 and the ignore index 255',
        pairs[3][1].name: 'is 16-bit (uint16); expected 8-bit',
        pairs[4][1].name: 'is 32x16 (WxH) but its label',
        pairs[5][1].name: 'has 3 channels; expected a single-channel PNG',
    }


@pytest.mark.parametrize('workers', [1, 2])
def test_every_bad_frame_is_reported_at_once(tmp_path, workers):
    pairs = write_pairs(tmp_path)
    expected = plant_bad_frames(pairs)
    report = check_frames(pairs, workers=workers, progress=False)
    assert (report.total, report.decoded, report.from_cache) == (6, 6, 0)
    assert len(report.problems) == len(expected)
    for name, phrase in expected.items():
        assert any(name in p and phrase in p for p in report.problems), (name, report.problems)


def test_image_channels_after_the_loaders_conversion(tmp_path):
    pairs = write_pairs(tmp_path, 2)
    cv2.imwrite(str(pairs[0][0]), np.zeros((16, 32, 4), np.uint8))  # RGBA
    cv2.imwrite(str(pairs[1][0]), np.zeros((16, 32), np.uint8))  # grey
    assert check_frames(pairs, progress=False).problems == []  # 'color' makes 3 of both
    problems = check_frames(pairs, FrameRules(color_type='unchanged'), progress=False).problems
    assert "has 4 channel(s) after loading with color_type='unchanged'; expected 3" in problems[0]
    assert 'has 1 channel(s)' in problems[1]


def test_cache_rechecks_only_new_or_changed_frames(tmp_path, monkeypatch):
    (tmp_path / 'data').mkdir()
    pairs = write_pairs(tmp_path / 'data')
    cache = cache_file(tmp_path / 'cache', tmp_path / 'data', tmp_path / 'data', ('a', 'b'),
                       FrameRules())
    first = check_frames(pairs, cache=cache, progress=False)
    assert (first.decoded, first.from_cache, first.problems) == (6, 0, [])

    decoded = []
    real = frame_check.frame_problem
    monkeypatch.setattr(frame_check, 'frame_problem',
                        lambda img, label, rules: decoded.append(img.name) or real(img, label, rules))
    again = check_frames(pairs, cache=cache, progress=False)
    assert (again.decoded, again.from_cache, decoded) == (0, 6, [])

    label = pairs[4][1]
    cv2.imwrite(str(label), np.full((16, 32), 50, np.uint8))
    os.utime(label, ns=(1, 1))  # a changed file, whatever the clock's resolution
    changed = check_frames(pairs, cache=cache, progress=False)
    assert (changed.decoded, changed.from_cache, decoded) == (1, 5, ['4_img.png'])
    assert 'holds values [50]' in changed.problems[0]
    assert check_frames(pairs, cache=cache, progress=False).decoded == 1  # bad: never cached


def test_corrupt_or_foreign_cache_is_ignored(tmp_path):
    (tmp_path / 'data').mkdir()
    pairs = write_pairs(tmp_path / 'data')
    bad_label = pairs[2][1]
    cv2.imwrite(str(bad_label), np.full((16, 32), 50, np.uint8))
    cache = tmp_path / 'cache.json'
    stat_img, stat_label = pairs[2][0].stat(), bad_label.stat()
    stamp = [stat_img.st_size, stat_img.st_mtime_ns, stat_label.st_size, stat_label.st_mtime_ns]
    rules = FrameRules()
    forged = [
        b'{"format": "repseg-frame-check-1", "passed": {',  # truncated
        json.dumps(dict(format='other-tool-1', rules=rules.__dict__,
                        passed={str(pairs[2][0]): stamp})).encode(),
        json.dumps(dict(format=frame_check.CACHE_FORMAT,  # written under other rules
                        rules=dict(rules.__dict__, num_classes=60),
                        passed={str(pairs[2][0]): stamp})).encode(),
    ]
    for content in forged:
        cache.write_bytes(content)
        report = check_frames(pairs, rules, cache=cache, progress=False)
        assert report.decoded == 6 and len(report.problems) == 1
        assert bad_label.name in report.problems[0]
        assert json.loads(cache.read_text())['format'] == frame_check.CACHE_FORMAT  # rewritten


# The pre-flight and the run -------------------------------------------------------------

@pytest.fixture
def toy(city_copy, tmp_path):
    """12 train frames: more than the 8 the pre-flight used to decode."""
    return city_copy(tmp_path, num_train=12)


def data_options(root, **extra):
    options = {f'{loader}.dataset.data_root': str(root)
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    return {**options, **extra}


def test_preflight_decodes_every_frame_not_a_sample(toy):
    """Frames 10 and 11 of 12: beyond the 8 the old pre-flight sampled."""
    label = toy / LABEL.format(10)
    seg = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    seg[5:9, 5:9] = 50
    cv2.imwrite(str(label), seg)
    image = toy / IMAGE.format(11)
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(PreflightError) as error:
        preflight(prepare_config(DEMO_CONFIG, data_options(toy)), 'train', 'demo.py')
    message = str(error.value)
    assert 'train_dataloader.dataset (in demo.py): 2 of 12 image/label pairs under' in message
    assert f"label '{label}' holds values [50] outside 0..18" in message
    assert f"cannot read image '{image}'" in message


def test_skip_data_check_says_so_and_decodes_nothing(toy, monkeypatch):
    (toy / IMAGE.format(3)).write_bytes(b'not a png')
    logged = []
    monkeypatch.setattr(preflight_module, 'print_log', lambda msg, **kw: logged.append(msg))
    cfg = prepare_config(DEMO_CONFIG, data_options(toy, skip_data_check=True))
    preflight(cfg, 'train')
    assert any(m.startswith('skipping the every-frame data check') for m in logged)


def test_second_preflight_decodes_nothing(toy, monkeypatch):
    cfg = prepare_config(DEMO_CONFIG, data_options(toy))
    preflight(cfg, 'train')

    def no_decoding(*args):
        raise AssertionError('decoded a frame although the cache knows it')

    monkeypatch.setattr(frame_check, 'frame_problem', no_decoding)
    preflight(cfg, 'train')
    preflight(cfg, 'test')  # the val split: the same folders, the same cache


def test_checked_loaders_name_the_file(toy):
    label = toy / LABEL.format(0)
    cv2.imwrite(str(label), np.full((64, 128), 50, np.uint8))
    loader = CheckedLoadAnnotations(num_classes=19, ignore_index=255)
    results = dict(seg_map_path=str(label), reduce_zero_label=False, seg_fields=[],
                   ori_shape=(64, 128))
    with pytest.raises(FrameLoadError, match=f"label '{label}' holds values \\[50\\]"):
        loader(results)
    image = toy / IMAGE.format(0)
    image.unlink()
    with pytest.raises(FrameLoadError, match=f"cannot read image '{image}'"):
        CheckedLoadImageFromFile()(dict(img_path=str(image)))
    worker_text = ('Caught FrameLoadError in DataLoader worker process 0.\nOriginal Traceback '
                   '(most recent call last):\n  File "x.py", line 1\nrepseg.mmseg.frame_guard.'
                   "FrameLoadError: label 'a.png' holds values [50]\n")
    assert str(FrameLoadError(worker_text)) == "label 'a.png' holds values [50]"


def test_frame_failing_mid_run_names_file_and_iteration(toy, tmp_path, single_thread):
    """A label changed after the check (here: the check skipped), read by a data-loader
    worker process in iteration 2: the run stops naming the file and the iteration."""
    label = toy / LABEL.format(2)
    seg = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    seg[:2, :2] = 50
    cv2.imwrite(str(label), seg)
    options = data_options(toy, **{
        'train_dataloader.num_workers': 1, 'train_dataloader.persistent_workers': False,
        'train_dataloader.sampler.shuffle': False, 'train_dataloader.batch_size': 2,
        'train_cfg.max_iters': 3, 'train_cfg.val_interval': 100,
        'default_hooks.checkpoint.interval': 1, 'model.decode_head.channels': 16,
        'model.auxiliary_head.channels': 8})
    with pytest.raises(FrameLoadError) as error:
        run_train(DEMO_CONFIG, work_dir=str(tmp_path / 'work'), cfg_options=options,
                  skip_data_check=True)
    message = str(error.value)
    assert message.startswith(f"label '{label}' holds values [50] outside 0..18")
    assert '(while loading the batch of training iteration 2)' in message
    assert 'continue from the last checkpoint with --resume' in message
    assert 'Traceback' not in message


@pytest.mark.parametrize('which', [0, 1], ids=['image', 'label'])
def test_cache_notices_a_new_mtime_alone(tmp_path, monkeypatch, which):
    """A file replaced by one of the same size (a re-export, a restored backup) differs
    only in its mtime; each of the pair's two files must count on its own."""
    pairs = write_pairs(tmp_path, 3)
    cache = tmp_path / 'cache.json'
    check_frames(pairs, cache=cache, progress=False)
    decoded = []
    real = frame_check.frame_problem
    monkeypatch.setattr(frame_check, 'frame_problem',
                        lambda img, label, rules: decoded.append(img.name) or real(img, label, rules))
    touched = pairs[1][which]
    size = touched.stat().st_size
    os.utime(touched, ns=(10**9, 10**9))
    assert touched.stat().st_size == size
    again = check_frames(pairs, cache=cache, progress=False)
    assert (again.decoded, again.from_cache, decoded) == (1, 2, [pairs[1][0].name])
