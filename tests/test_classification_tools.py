"""Classification through the other tools a user runs: tools/export_onnx.py (the .onnx
tested by tools/test.py predicts as the checkpoint), tools/dist_test.sh and
tools/dist_train.sh on two CPU processes (torchrun, gloo), and the training guards
(NaN/Inf loss, --tensorboard, --amp) on a classification config.

One toy set and one A0 trained for 20 iterations by tools/train.py serve the module. The
val set is one image short of 3 per class (29), so two processes' sampler pads a batch;
its size is counted from the files on disk."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repseg.data.toy_imagenet import make_toy_imagenet
from repseg.gpu_check.steps import free_port
from tiny_models import load_tool

pytest.importorskip('mmpretrain')
from repseg.classification import runner  # noqa: E402
from repseg.mmseg.hooks import POINTER_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOY_CONFIG = ROOT / 'configs/classification/repvgg_a0_toy.py'
#: RepVGG-A0 fused: one 3x3 conv for the stem and each of its 2 + 4 + 14 + 1 blocks
#: (the paper's Table 2), none for the train-time 1x1 and identity branches.
A0_FUSED_CONVS = 22
TEST_BATCH = 4

pytestmark = pytest.mark.usefixtures('single_thread')


def options(root, loaders=('train', 'val', 'test'), **extra):
    items = {f'{name}_dataloader.dataset.data_root': root for name in loaders}
    items.update({f'{name}_dataloader.num_workers': 0 for name in loaders})
    items.update(extra)
    return [f'{k}={v}' for k, v in items.items()]


def label_of(path) -> int:
    """The class index of a toy image, from its folder (``c<i>_<name>``)."""
    return int(Path(path).parent.name[1])


def recount(predictions):
    """top-1 and top-5 in percent, counted from the per-image predictions."""
    hits1 = [p['topk'][0]['index'] == label_of(p['image']) for p in predictions]
    hits5 = [label_of(p['image']) in [t['index'] for t in p['topk']] for p in predictions]
    return 100 * np.mean(hits1), 100 * np.mean(hits5)


def run_tool(*command, **env):
    return subprocess.run([*command], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1', **env), timeout=300)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_imagenet')
    make_toy_imagenet(root, num_train=4, num_val=3, size=48)
    next((root / 'val' / 'c3_ring').glob('*.JPEG')).unlink()
    return root


@pytest.fixture(scope='module')
def val_images(toy):
    """The val images on disk: what every test must count once."""
    images = sorted(str(p) for p in (toy / 'val').rglob('*.JPEG'))
    assert len(images) == 29
    return images


@pytest.fixture(scope='module')
def trained(toy, tmp_path_factory):
    """A0 trained by tools/train.py (in this process) for 20 iterations on the toy set."""
    np.random.seed(0)
    work = tmp_path_factory.mktemp('cls_train')
    load_tool('train').main([str(TOY_CONFIG), '--work-dir', str(work), '--cfg-options',
                             *options(toy, ('train', 'val'), **{
                                 'train_cfg.max_epochs': 2, 'train_dataloader.batch_size': 4,
                                 'optim_wrapper.optimizer.lr': 0.01,
                                 'train_cfg.val_interval': 5,
                                 'default_hooks.checkpoint.interval': 2})])
    checkpoint = work / 'epoch_2.pth'
    assert checkpoint.is_file()
    return checkpoint


def toy_test_options(root):
    return options(root, ('test',), **{'test_dataloader.batch_size': TEST_BATCH})


@pytest.fixture(scope='module')
def single(toy, trained, val_images, tmp_path_factory):
    """tools/test.py on the checkpoint in one process (fused, the default), with --out."""
    work = tmp_path_factory.mktemp('cls_single')
    load_tool('test').main([str(TOY_CONFIG), str(trained), '--work-dir', str(work), '--out',
                            str(work / 'out'), '--cfg-options', *toy_test_options(toy)])
    metrics = json.loads((work / 'metrics.json').read_text())
    predictions = json.loads((work / 'out' / runner.PREDICTIONS_FILE).read_text())
    assert [p['image'] for p in predictions] == val_images
    assert len({p['topk'][0]['index'] for p in predictions}) >= 2, \
        'degenerate model: one class for every image'
    top1, top5 = recount(predictions)
    assert metrics['accuracy/top1'] == pytest.approx(top1, abs=1e-3)
    assert metrics['accuracy/top5'] == pytest.approx(top5, abs=1e-3)
    return metrics, predictions


def assert_same_predictions(ours, reference, atol):
    assert [p['image'] for p in ours] == [p['image'] for p in reference]
    assert [p['label'] for p in ours] == [label_of(p['image']) for p in reference]
    for mine, theirs in zip(ours, reference):
        probs = [t['prob'] for t in theirs['topk']]
        ties = np.diff(probs) > -atol  # neighbours this close may swap
        indices = [[t['index'] for t in p['topk']] for p in (mine, theirs)]
        assert indices[0] == indices[1] or ties.any(), mine['image']
        np.testing.assert_allclose([t['prob'] for t in mine['topk']], probs, atol=atol)


# tools/export_onnx.py -----------------------------------------------------------------------

def test_export_tool_onnx_tests_as_the_checkpoint(toy, trained, single, val_images, tmp_path):
    pytest.importorskip('onnxruntime')
    import onnx

    out = tmp_path / 'a0.onnx'
    result = run_tool(sys.executable, 'tools/export_onnx.py', str(TOY_CONFIG), str(trained),
                      str(out), '--image', val_images[0])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'top-1 equal on 4/4 images' in result.stdout
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert ops.count('Conv') == A0_FUSED_CONVS and 'BatchNormalization' not in ops

    result = run_tool(sys.executable, 'tools/test.py', str(TOY_CONFIG), str(out),
                      '--work-dir', str(tmp_path), '--out', str(tmp_path / 'out'),
                      '--cfg-options', *toy_test_options(toy))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['backend'] == 'onnxruntime' and metrics['images'] == len(val_images)
    for key in ('accuracy/top1', 'accuracy/top5'):
        assert metrics[key] == single[0][key], key
    predictions = json.loads((tmp_path / 'out' / runner.PREDICTIONS_FILE).read_text())
    assert_same_predictions(predictions, single[1], atol=1e-4)


@pytest.mark.parametrize('name, existing, extra, message', [
    ('a0.pth', False, [], 'OUT must be an .onnx file'),
    ('a0.onnx', True, [], '1 output already exists'),
    ('a0.onnx', False, ['--labels'], '--labels is for segmentation configs'),
])
def test_export_tool_bad_input_writes_nothing(trained, tmp_path, capsys, name, existing,
                                              extra, message):
    out = tmp_path / name
    if existing:
        out.write_bytes(b'an earlier export')
    with pytest.raises(SystemExit) as exit_info:
        load_tool('export_onnx').main([str(TOY_CONFIG), str(trained), str(out), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ([name] if existing else [])
    if existing:
        assert out.read_bytes() == b'an earlier export'


def test_export_verification_failure_keeps_the_earlier_file(trained, tmp_path, capsys,
                                                            monkeypatch):
    """A graph that does not swap BGR to RGB as the data preprocessor does is caught by
    the check and not written (exit 1, VerificationError); --force's earlier file stays."""
    pytest.importorskip('onnxruntime')
    from repseg.classification import export

    def no_channel_swap(self, image):
        return self.classifier((image - self.mean) / self.std, mode='tensor')

    monkeypatch.setattr(export.ClassifierForExport, 'forward', no_channel_swap)
    out = tmp_path / 'a0.onnx'
    out.write_bytes(b'an earlier export')
    with pytest.raises(SystemExit) as exit_info:
        load_tool('export_onnx').main([str(TOY_CONFIG), str(trained), str(out), '--force'])
    assert exit_info.value.code == 1
    assert 'onnxruntime and PyTorch disagree' in capsys.readouterr().err
    assert out.read_bytes() == b'an earlier export'
    assert [p.name for p in tmp_path.iterdir()] == ['a0.onnx']


# Two CPU processes ----------------------------------------------------------------------------

def test_dist_test_two_cpu_processes_count_each_image_once(toy, trained, single, val_images,
                                                           tmp_path):
    assert len(val_images) % 2 == 1  # so the sampler pads rank 1's last batch
    result = run_tool('bash', 'tools/dist_test.sh', str(TOY_CONFIG), str(trained), '2',
                      '--work-dir', str(tmp_path), '--out', str(tmp_path / 'out'),
                      '--cfg-options', *toy_test_options(toy),
                      PYTHON=sys.executable, PORT=str(free_port()))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert len(list(tmp_path.glob('*/rank1.log'))) == 1
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    predictions = json.loads((tmp_path / 'out' / runner.PREDICTIONS_FILE).read_text())
    assert len(predictions) == len(val_images) == metrics['images']
    assert sorted(p['image'] for p in predictions) == val_images
    top1, top5 = recount(predictions)
    assert metrics['accuracy/top1'] == pytest.approx(top1, abs=1e-3)
    assert metrics['accuracy/top5'] == pytest.approx(top5, abs=1e-3)
    for key in ('accuracy/top1', 'accuracy/top5'):
        assert metrics[key] == single[0][key], key
    assert_same_predictions(predictions, single[1], atol=2e-6)


def test_dist_train_two_cpu_processes(toy, tmp_path):
    """40 train images over 2 processes in batches of 4: 5 iterations per epoch (one
    process would take 10)."""
    result = run_tool('bash', 'tools/dist_train.sh', str(TOY_CONFIG), '2', '--work-dir',
                      str(tmp_path), '--cfg-options', *options(toy, ('train', 'val'), **{
                          'train_cfg.max_epochs': 1, 'train_dataloader.batch_size': 4,
                          'train_cfg.val_interval': 5, 'default_hooks.logger.interval': 1,
                          'default_hooks.checkpoint.interval': 1}),
                      PYTHON=sys.executable, PORT=str(free_port()))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_1.pth']
    assert (tmp_path / POINTER_FILE).read_text().endswith('epoch_1.pth')
    rank1_logs = list(tmp_path.glob('*/rank1.log'))
    assert len(rank1_logs) == 1
    rank1 = rank1_logs[0].read_text()
    assert 'rank 1 of 2' in rank1 and 'Epoch(train) [1][5/5]' in rank1
    state = torch.load(tmp_path / 'epoch_1.pth', map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 5
    assert "launcher = 'pytorch'" in state['meta']['cfg']
    assert all(torch.isfinite(t).all() for t in state['state_dict'].values()
               if t.is_floating_point())


# Training guards ------------------------------------------------------------------------------

def test_huge_lr_stops_with_the_guard_and_only_finite_checkpoints(toy, tmp_path):
    """lr 1e9 (1e8 in the first warm-up iteration) with a checkpoint every iteration:
    the tool exits 2 with the guard's message, and every checkpoint on disk is finite."""
    result = run_tool(sys.executable, 'tools/train.py', str(TOY_CONFIG), '--work-dir',
                      str(tmp_path), '--cfg-options', *options(toy, ('train', 'val'), **{
                          'train_cfg.max_epochs': 1, 'train_dataloader.batch_size': 4,
                          'train_cfg.val_interval': 5, 'optim_wrapper.optimizer.lr': 1e9,
                          'default_hooks.checkpoint.by_epoch': False,
                          'default_hooks.checkpoint.interval': 1}))
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert 'error: training stopped at iteration' in result.stderr
    assert 'the loss is not finite (loss=' in result.stderr
    saved = sorted(tmp_path.glob('*.pth'))
    assert saved, 'no checkpoint before the NaN: nothing to check'
    for path in saved:
        state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
    pointer = Path((tmp_path / POINTER_FILE).read_text())
    assert pointer in saved and f'{pointer}, holds only finite tensors' in result.stderr


def test_tensorboard_events_of_a_classification_run(toy, tmp_path):
    """--tensorboard: the event file's loss, lr and top-1 equal mmengine's JSON log."""
    pytest.importorskip('tensorboard', reason='--tensorboard needs the tensorboard package')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    np.random.seed(0)
    load_tool('train').main([str(TOY_CONFIG), '--work-dir', str(tmp_path), '--tensorboard',
                             '--cfg-options', *options(toy, ('train', 'val'), **{
                                 'train_cfg.max_epochs': 1, 'train_dataloader.batch_size': 8,
                                 'train_cfg.val_interval': 1,
                                 'default_hooks.logger.interval': 1})])
    events = list(tmp_path.glob('*/vis_data/events.out.tfevents.*'))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    logged = [json.loads(line) for line in
              (events[0].parent / 'scalars.json').read_text().splitlines()]
    for tag in ('loss', 'lr', 'accuracy/top1'):
        expected = [(r['step'], r[tag]) for r in logged if tag in r]
        found = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        assert expected and [s for s, _ in found] == [s for s, _ in expected], tag
        assert np.allclose([v for _, v in found], [v for _, v in expected], rtol=1e-6), tag
    assert len(accumulator.Scalars('loss')) == 5  # 40 images in batches of 8


@pytest.mark.skipif(torch.cuda.is_available(), reason='--amp trains on CUDA; refused on CPU')
def test_amp_on_cpu_is_refused_as_for_segmentation(toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('train').main([str(TOY_CONFIG), '--work-dir', str(tmp_path), '--amp',
                                 '--cfg-options', *options(toy, ('train', 'val'))])
    assert exit_info.value.code == 2
    assert 'error: --amp needs a CUDA GPU' in capsys.readouterr().err
    assert not list(tmp_path.rglob('*.pth'))
