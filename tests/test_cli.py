"""The convention of every tool (repseg/cli.py) and the overwrite rule (repseg/fileio.py):
``--help`` without torch, exit statuses end to end, ``--force``, and the helpers."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import repseg
from repseg.checkpoint import LAYOUTS
from repseg.checkpoint.convert import convert_checkpoint
from repseg.cli import exit_on_user_error, parse_cfg_options
from repseg.data.toy_city import make_toy_cityscapes, toy_city_files
from repseg.errors import InvalidArgumentError, OutputExistsError, VerificationError
from repseg.fileio import OutputLocationError, check_output_location, claim_outputs, same_file
from repseg.mmseg.builder import build_segmentor, load_config
from tiny_models import load_tool

ROOT = Path(__file__).resolve().parents[1]
#: Every tool in tools/: a new one is held to the convention without being listed here.
TOOLS = tuple(sorted(path.stem for path in (ROOT / 'tools').glob('*.py')))
#: Generous bound for ``--help`` on a 2-core CI machine (measured: about 0.3 s).
HELP_SECONDS = 1.5
#: Run a tool as a script with the heavy packages made unimportable.
NO_HEAVY_IMPORTS = """
import runpy, sys
for name in ('torch', 'mmengine', 'mmseg', 'mmcv', 'cv2', 'numpy'):
    sys.modules[name] = None  # importing them now raises ImportError
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def run_script(*args, code=None, cwd=ROOT):
    command = [sys.executable, '-c', code, *map(str, args)] if code else \
        [sys.executable, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize('tool', TOOLS)
def test_help_answers_fast_without_torch(tool):
    start = time.perf_counter()
    result = run_script(ROOT / 'tools' / f'{tool}.py', '--help', code=NO_HEAVY_IMPORTS)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith('usage:')
    assert seconds < HELP_SECONDS


def test_usage_errors_exit_2_without_torch():
    result = run_script(ROOT / 'tools' / 'train.py', code=NO_HEAVY_IMPORTS)
    assert result.returncode == 2
    assert 'error: the following arguments are required: config' in result.stderr


def test_gpu_check_without_the_openmmlab_stack_exits_2_naming_the_wheels(tmp_path):
    """A GPU image without mm* packages (``--wheels`` forgotten): one error, no traceback,
    nothing written."""
    result = run_script(ROOT / 'tools' / 'gpu_check.py', '--smoke', tmp_path / 'out',
                        code=NO_HEAVY_IMPORTS)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith('error: repseg cannot be imported')
    assert '--wheels DIR' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'out').exists()


def test_copies_of_library_constants_in_the_tools_agree():
    from repseg import export
    from repseg.fast_inference import COMPILE_VARIANTS, VARIANTS
    from repseg.speed import benchmark, models

    assert load_tool('convert').LAYOUT_NAMES == tuple(LAYOUTS)
    assert load_tool('export_onnx').DEFAULT_OPSET == export.DEFAULT_OPSET
    tool = load_tool('benchmark')
    assert tool.DEFAULT_SHAPE == benchmark.DEFAULT_SHAPE
    assert tool.CLS_DEFAULTS == benchmark.CLS_DEFAULTS
    assert tool.TORCHVISION_CLASSIFIERS == models.TORCHVISION_CLASSIFIERS
    assert tool.VARIANT_NAMES == (*VARIANTS, *COMPILE_VARIANTS)
    from repseg import quantization

    tool = load_tool('quantize')
    assert tool.METHODS == quantization.METHODS
    assert tool.DEFAULT_OP_TYPES == quantization.DEFAULT_OP_TYPES


# End to end: real processes ---------------------------------------------------------------

@pytest.fixture(scope='module')
def a0_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('cli') / 'a0.pth'
    torch.save(repseg.create_model('A0', num_classes=3).state_dict(), path)
    return path


def test_user_error_exits_2_with_one_paragraph_and_no_traceback(a0_checkpoint):
    before = a0_checkpoint.read_bytes()
    result = run_script(ROOT / 'tools' / 'convert.py', a0_checkpoint, a0_checkpoint,
                        '--arch', 'A0', '--force')
    assert result.returncode == 2
    assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1
    assert 'Traceback' not in result.stderr and 'is the source checkpoint' in result.stderr
    assert a0_checkpoint.read_bytes() == before


BROKEN_CONVERT = """
import runpy, sys
sys.path.insert(0, '.')
import repseg.checkpoint.convert as convert

def broken(*args, **kwargs):
    raise {error}

convert.convert_checkpoint = broken
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.parametrize('error, status, shown', [
    ("RuntimeError('a bug')", 1, 'Traceback'),
    ('KeyboardInterrupt', 130, 'error: interrupted (Ctrl-C)'),
], ids=['bug', 'ctrl-c'])
def test_bugs_keep_their_traceback_and_ctrl_c_exits_130(error, status, shown, tmp_path,
                                                       a0_checkpoint):
    result = run_script(ROOT / 'tools' / 'convert.py', a0_checkpoint, tmp_path / 'out.pth',
                        '--arch', 'A0', code=BROKEN_CONVERT.format(error=error))
    assert result.returncode == status, result.stderr[-2000:]
    assert shown in result.stderr
    if status == 130:
        assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('launcher, argv', [('dist_train.sh', ['cfg.py', 'eight']),
                                             ('dist_test.sh', ['cfg.py', 'ckpt.pth', '0'])])
def test_launchers_refuse_a_bad_process_count(launcher, argv):
    result = subprocess.run(['bash', str(ROOT / 'tools' / launcher), *argv],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith('error: NUM_PROCESSES must be a positive integer')


# The helpers --------------------------------------------------------------------------------

def test_cfg_options_accumulate_and_parse_like_mmengine():
    args = load_tool('train').parse_args(['cfg.py', '--cfg-options', 'a.b=1', 'c=[1,2]',
                                          '--cfg-options', 'd=None', 'e=x,y', 'f=0.5'])
    assert parse_cfg_options(args.cfg_options) == {
        'a.b': 1, 'c': [1, 2], 'd': None, 'e': ['x', 'y'], 'f': 0.5}
    assert parse_cfg_options(None) is None
    with pytest.raises(InvalidArgumentError, match="'a.b': expected KEY=VALUE"):
        parse_cfg_options(['a.b'])


@pytest.mark.parametrize('error, status', [
    (InvalidArgumentError('bad value'), 2), (FileNotFoundError('no such file'), 2),
    (VerificationError('check failed'), 1), (KeyboardInterrupt(), 130),
])
def test_exit_statuses(error, status, capsys):
    try:
        with exit_on_user_error():
            raise error
    except SystemExit as exit_:
        assert exit_.code == status
    except BaseException as escaped:  # noqa: B902 (KeyboardInterrupt would stop pytest)
        pytest.fail(f'{type(escaped).__name__} escaped the convention')
    assert capsys.readouterr().err.startswith('error: ')


def test_other_errors_propagate():
    with pytest.raises(OSError), exit_on_user_error():
        raise OSError('disk full')


@pytest.fixture
def logged(monkeypatch):
    """The messages repseg.fileio logs."""
    messages = []
    monkeypatch.setattr('repseg.fileio.print_log',
                        lambda message, **kwargs: messages.append(message))
    return messages


def test_claim_outputs_refuses_lists_and_replaces_with_force(tmp_path, logged):
    paths = [tmp_path / f'{i}.png' for i in range(8)]
    for path in paths[:7]:
        path.write_bytes(b'old')
    assert claim_outputs(paths[7:], force=False) == []
    with pytest.raises(OutputExistsError) as error:
        claim_outputs(paths, force=False)
    assert str(error.value).startswith(f'7 outputs already exist: {paths[0]}, ')
    assert 'and 2 more. Nothing was written. Pass --force' in str(error.value)
    assert isinstance(error.value, FileExistsError)
    assert not logged
    assert claim_outputs(paths, force=True) == paths[:7]
    assert logged == [f'--force: replacing 7 outputs: {", ".join(map(str, paths[:5]))} and 2 more']
    assert all(path.read_bytes() == b'old' for path in paths[:7])  # only claimed


def test_same_file_sees_links_and_spellings(tmp_path):
    (tmp_path / 'a').write_bytes(b'x')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'soft').symlink_to(tmp_path / 'a')
    os.link(tmp_path / 'a', tmp_path / 'hard')
    for other in ('soft', 'hard', 'sub/../a', './a'):
        assert same_file(tmp_path / 'a', tmp_path / other), other
    assert not same_file(tmp_path / 'a', tmp_path / 'b')
    (tmp_path / 'b').write_bytes(b'x')
    assert not same_file(tmp_path / 'a', tmp_path / 'b')


def test_check_output_location(tmp_path):
    (tmp_path / 'file').write_text('x')
    (tmp_path / 'dir').mkdir()
    assert check_output_location(tmp_path / 'new' / 'deeper', is_folder=True)
    assert check_output_location(tmp_path / 'dir', is_folder=True)
    for path, is_folder in ((tmp_path / 'file' / 'x' / 'y', True), (tmp_path / 'file', True),
                            (tmp_path / 'dir', False)):
        with pytest.raises(OutputLocationError):
            check_output_location(path, is_folder)


# --force and the outputs it protects -------------------------------------------------------

@pytest.fixture(scope='module')
def segmentor_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('segmentor')
    cfg = load_config(ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py',
                      {'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 8})
    cfg.dump(str(folder / 'narrow.py'))
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_segmentor(cfg)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, folder / 'seg.pth')
    return folder, model


def test_force_replaces_earlier_outputs_and_says_so(a0_checkpoint, tmp_path, logged, capsys):
    dst = tmp_path / 'out.pth'
    dst.write_bytes(b'stale')
    load_tool('convert').main([str(a0_checkpoint), str(dst), '--arch', 'A0', '--to', 'repseg',
                               '--force'])
    assert logged == [f'--force: replacing 1 output: {dst}']
    assert 'wrote' in capsys.readouterr().out
    written, source = (torch.load(p, weights_only=True) for p in (dst, a0_checkpoint))
    assert written.keys() == source.keys()
    assert all(torch.equal(written[k], source[k]) for k in source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.pth']


def test_convert_takes_the_backbone_of_a_segmentor_checkpoint(segmentor_files, tmp_path):
    folder, model = segmentor_files
    summary = convert_checkpoint(folder / 'seg.pth', tmp_path / 'backbone.pth', 'A0',
                                 to='repseg')
    expected = {k[len('backbone.'):]: v for k, v in model.state_dict().items()
                if k.startswith('backbone.')}
    written = torch.load(tmp_path / 'backbone.pth', weights_only=True)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    heads = [k for k in model.state_dict() if not k.startswith('backbone.')]
    assert summary['num_classes'] == 0 and summary['segmentor_heads'] == len(heads)
    classifier = repseg.create_model('A0', num_classes=0)
    report = repseg.load_checkpoint(classifier, folder / 'seg.pth')
    assert 'backbone of a segmentor checkpoint' in report.summary()
    assert torch.equal(classifier.stem.conv3x3.conv.weight,
                       expected['stem.conv3x3.conv.weight'])


def test_toy_city_files_are_the_files_written(tmp_path):
    make_toy_cityscapes(tmp_path, num_train=2, num_val=1, size=(32, 32))
    written = {p for p in tmp_path.rglob('*') if p.is_file()}
    assert written == set(toy_city_files(tmp_path, num_train=2, num_val=1))
    make_toy_cityscapes(tmp_path, num_train=2, num_val=1, size=(32, 32), force=True)
    with pytest.raises(FileExistsError):
        make_toy_cityscapes(tmp_path, num_train=1, num_val=0, size=(32, 32))


# The README's commands with an .onnx model, each in a fresh process ----------------------

@pytest.fixture(scope='module')
def onnx_runs(tmp_path_factory):
    """A tiny exported model run by the README's infer, test and benchmark commands, as
    a user runs them: three new processes (started together), where nothing has set up
    mmseg's registry before the tool does. Returns the folder, the image, the processes'
    results and the model's labels from ONNX Runtime called directly (the oracle)."""
    import cv2
    import onnxruntime as ort

    from repseg.export import export_onnx, image_batch
    from tiny_models import spread_predictions

    folder = tmp_path_factory.mktemp('onnx_cli')
    make_toy_cityscapes(folder / 'toy', num_train=1, num_val=1, size=(64, 128), seed=3)
    options = {'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 8,
               'test_dataloader.dataset.data_root': str(folder / 'toy')}
    cfg = load_config(ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py', options)
    cfg.dump(str(folder / 'narrow.py'))
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = spread_predictions(build_segmentor(cfg))
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, folder / 'seg.pth')
    export_onnx(model, folder / 'm.onnx', (64, 128))
    image_path = next((folder / 'toy' / 'leftImg8bit' / 'val').rglob('*.png'))
    image = cv2.imread(str(image_path))
    session = ort.InferenceSession(str(folder / 'm.onnx'), providers=['CPUExecutionProvider'])
    output = session.run(None, {'image': image_batch(image)})
    tools, config, model_file = ROOT / 'tools', folder / 'narrow.py', folder / 'm.onnx'
    commands = {
        'infer': [tools / 'infer.py', config, model_file, image_path, '--out-dir',
                  folder / 'out', '--no-progress'],
        'test': [tools / 'test.py', config, model_file, '--work-dir', folder / 'work'],
        'benchmark': [tools / 'benchmark.py', config, folder / 'seg.pth', '--shape', '64',
                      '128', '--device', 'cpu', '--threads', '1', '--warmup', '1',
                      '--iters', '2', '--int8', model_file],
    }
    processes = {name: subprocess.Popen([sys.executable, *map(str, argv)], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
                 for name, argv in commands.items()}
    results = {}
    for name, process in processes.items():
        out, err = process.communicate()
        results[name] = (process.returncode, out, err)
    return dict(folder=folder, image=image_path, results=results,
                labels=output[0].argmax(axis=1)[0])


def test_readme_infer_command_runs_an_onnx_model_in_a_fresh_process(onnx_runs):
    import cv2

    status, _, err = onnx_runs['results']['infer']
    assert status == 0, err[-3000:]
    stem = onnx_runs['folder'] / 'out' / onnx_runs['image'].stem
    labels = cv2.imread(f'{stem}_trainIds.png', cv2.IMREAD_UNCHANGED)
    assert labels is not None and (labels == onnx_runs['labels']).all()
    assert Path(f'{stem}_mask.png').is_file() and Path(f'{stem}_overlay.png').is_file()


def test_readme_test_command_runs_an_onnx_model_in_a_fresh_process(onnx_runs):
    import json

    import cv2

    status, out, err = onnx_runs['results']['test']
    assert status == 0, err[-3000:]
    record = json.loads((onnx_runs['folder'] / 'work' / 'metrics.json').read_text())
    assert record['backend'] == 'onnxruntime' and f"mIoU {record['mIoU']:.2f}" in out
    name = onnx_runs['image'].name.replace('_leftImg8bit.png', '_gtFine_labelTrainIds.png')
    truth = cv2.imread(str(next(onnx_runs['folder'].rglob(name))), cv2.IMREAD_UNCHANGED)
    valid = truth != 255
    expected = 100 * (onnx_runs['labels'][valid] == truth[valid]).mean()
    assert record['aAcc'] == pytest.approx(expected, abs=0.01)


def test_readme_benchmark_command_times_an_onnx_model_in_a_fresh_process(onnx_runs):
    status, out, err = onnx_runs['results']['benchmark']
    assert status == 0, err[-3000:]
    assert 'ONNX Runtime INT8 (m.onnx): 100.00% of pixels labelled as by' in out
