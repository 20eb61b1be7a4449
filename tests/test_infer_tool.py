"""tools/infer.py: folders (nested), a corrupt file, odd sizes, a video, batching, and
train-time / fused checkpoints with train / deploy configs."""
from pathlib import Path

import cv2
import numpy as np
import pytest

import repseg.segment as segment_module
from repseg.mmseg.deploy import deploy_segmentor
from repseg.segment import (InputError, Segmenter, collect_sources, load_segmentor,
                            segment, segment_sources)
from tiny_models import load_tool, narrow_demo_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def random_scene(rng, height, width):
    """A smooth random BGR image (sky-like top, road-like bottom)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:height // 2] = (200, 150, 110)
    image[height // 2:] = (90, 90, 90)
    noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    return cv2.add(image, noise)


@pytest.fixture(scope='module')
def model_files(tmp_path_factory):
    """A narrow demo config, a random-weight train-time checkpoint and its fused pair."""
    folder = tmp_path_factory.mktemp('model')
    cfg_path, ckpt = narrow_demo_checkpoint(folder)
    fused_ckpt, fused_cfg = deploy_segmentor(cfg_path, ckpt, folder / 'deploy')
    return dict(cfg=cfg_path, ckpt=ckpt, fused_cfg=Path(fused_cfg), fused_ckpt=Path(fused_ckpt))


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('inputs')
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / 'a.png'), random_scene(rng, 64, 128))
    (folder / 'nested' / 'deeper').mkdir(parents=True)
    cv2.imwrite(str(folder / 'nested' / 'deeper' / 'b.jpg'), random_scene(rng, 64, 128))
    cv2.imwrite(str(folder / 'nested' / 'odd.png'), random_scene(rng, 37, 91))
    cv2.imwrite(str(folder / 'c.png'), random_scene(rng, 64, 128))
    good = (folder / 'a.png').read_bytes()
    (folder / 'corrupt.png').write_bytes(good[:len(good) // 3])
    (folder / 'notes.txt').write_text('not an image')
    writer = cv2.VideoWriter(str(folder / 'clip.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 5,
                             (96, 48))
    for _ in range(5):
        writer.write(random_scene(rng, 48, 96))
    writer.release()
    return folder


def test_folder_with_corrupt_file_nested_odd_size_and_video(model_files, inputs, tmp_path):
    summary = segment(model_files['cfg'], model_files['ckpt'], [inputs], tmp_path,
                      batch_size=2, progress=False)
    assert summary.images == 4 and summary.frames == 5
    assert [p.name for p, _ in summary.skipped] == ['corrupt.png']
    assert 'corrupt' in summary.skipped[0][1]
    assert 'skipped: 1' in summary.line() and 'corrupt.png' in summary.line()
    assert 's per image' in summary.line()
    for stem in ('a', 'c', 'nested/deeper/b', 'nested/odd'):
        for suffix in ('_mask.png', '_overlay.png', '_trainIds.png'):
            assert (tmp_path / f'{stem}{suffix}').is_file(), stem + suffix
    odd = cv2.imread(str(tmp_path / 'nested/odd_trainIds.png'), cv2.IMREAD_UNCHANGED)
    assert odd.shape == (37, 91) and odd.max() < 19
    assert cv2.imread(str(tmp_path / 'nested/odd_overlay.png')).shape == (37, 91, 3)
    assert not (tmp_path / 'corrupt_mask.png').exists()
    for kind in ('mask', 'overlay'):
        video = cv2.VideoCapture(str(tmp_path / f'clip_{kind}.avi'))
        frames = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            assert frame.shape == (48, 96, 3)
            frames += 1
        assert frames == 5


def test_fused_and_train_checkpoints_with_either_config_agree(model_files, inputs):
    image = cv2.imread(str(inputs / 'a.png'))
    results = []
    for cfg, ckpt in ((model_files['cfg'], model_files['ckpt']),
                      (model_files['fused_cfg'], model_files['fused_ckpt']),
                      (model_files['fused_cfg'], model_files['ckpt'])):
        results.append(Segmenter(load_segmentor(cfg, ckpt))([image])[0])
    for labels in results[1:]:
        assert (labels == results[0]).mean() > 0.999
    half = Segmenter(load_segmentor(model_files['fused_cfg'], model_files['fused_ckpt'],
                                    fp16=True))([image])[0]
    assert half.shape == image.shape[:2] and (half == results[0]).mean() > 0.9


def test_batching_gives_the_same_labels(model_files, inputs, tmp_path):
    segmenter = Segmenter(load_segmentor(model_files['cfg'], model_files['ckpt']))
    sources = collect_sources([inputs / 'a.png', inputs / 'c.png'], tmp_path)
    segment_sources(segmenter, sources, batch_size=1, progress=False)
    one = [cv2.imread(str(tmp_path / f'{s}_trainIds.png'), cv2.IMREAD_UNCHANGED) for s in 'ac']
    segment_sources(segmenter, sources, batch_size=2, progress=False)
    two = [cv2.imread(str(tmp_path / f'{s}_trainIds.png'), cv2.IMREAD_UNCHANGED) for s in 'ac']
    for a, b in zip(one, two):
        assert (a == b).mean() > 0.999


def test_missing_input_and_empty_folder_are_user_errors(tmp_path):
    with pytest.raises(InputError, match='input not found: .*nope'):
        collect_sources([tmp_path / 'nope'], tmp_path / 'out')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(InputError, match='no images or videos found'):
        collect_sources([tmp_path / 'empty'], tmp_path / 'out')


def test_same_stem_from_two_places_gets_distinct_outputs(inputs, tmp_path):
    sources = collect_sources([inputs / 'a.png', inputs / 'a.png'], tmp_path)
    assert [s.out_stem.name for s in sources] == ['a', 'a_2']


def test_cli_reports_skipped_file_and_summary(model_files, inputs, tmp_path, capsys,
                                             monkeypatch):
    """In-process (the subprocess path of the tool convention is tested in test_cli.py;
    a missing input is a case of test_error_matrix.py). The summary goes to mmengine's
    logger, whose handler holds the real stderr: its messages are recorded on the way."""
    logged = []
    real_print_log = segment_module.print_log
    monkeypatch.setattr(segment_module, 'print_log',
                        lambda message, *a, **k: (logged.append(str(message)),
                                                  real_print_log(message, *a, **k)))
    load_tool('infer').main([str(model_files['fused_cfg']), str(model_files['fused_ckpt']),
                             str(inputs / 'corrupt.png'), str(inputs / 'a.png'),
                             '--out-dir', str(tmp_path), '--opacity', '0.3'])
    captured = capsys.readouterr()
    output = captured.out + captured.err + '\n'.join(logged)
    assert 'skipped' in output and 'corrupt.png' in output
    assert 'done: 1 images; skipped: 1' in output
    assert (tmp_path / 'a_overlay.png').is_file()
