"""repseg.speed against independent references: a call that sleeps a known time, records
and tables written by hand; the import-cycle scan of repseg/; the benchmark tool's
refusals that need no model."""
import importlib.util
import json
import time
from pathlib import Path

import pytest

from repseg.speed.record import add_ratios, make_record, records_to_json
from repseg.speed.report import agreement_lines, markdown_table, records_table
from repseg.speed.timing import MIN_TIMED_CALLS, Timing, time_calls
from tiny_models import TINY_CONFIG, load_tool

ROOT = Path(__file__).resolve().parents[1]
SLEEP = 0.02


def sleeper(seconds, log=None, name=None):
    def call():
        if log is not None:
            log.append(name)
        time.sleep(seconds)
    return call


def test_time_calls_measures_a_known_sleep():
    [timing] = time_calls([sleeper(SLEEP)], warmup=1, iters=3, device='cpu')
    assert len(timing.seconds) == 3
    # a sleep never ends early; a loaded machine may add a few milliseconds
    assert all(SLEEP <= s < SLEEP + 0.05 for s in timing.seconds), timing.seconds
    assert timing.peak_mem_mb is not None and timing.peak_mem_mb >= 0


def test_interleaved_calls_take_turns_after_every_warm_up():
    log = []
    calls = [sleeper(0.0, log, 'a'), sleeper(SLEEP, log, 'b')]
    timings = time_calls(calls, warmup=2, iters=1, device='cpu', rounds=3, memory=False)
    assert log == ['a', 'a', 'b', 'b'] + ['a', 'b'] * 3
    assert [len(t.seconds) for t in timings] == [1 * 3, 1 * 3]
    assert max(timings[0].seconds) < SLEEP <= min(timings[1].seconds)
    assert all(t.peak_mem_mb is None for t in timings)


def test_blocks_of_calls_per_round_and_the_time_cap():
    log = []
    calls = [sleeper(0.0, log, 'a'), sleeper(0.0, log, 'b')]
    time_calls(calls, warmup=0, iters=2, device='cpu', rounds=2, memory=False)
    assert log == ['a', 'a', 'b', 'b', 'a', 'a', 'b', 'b']
    [capped] = time_calls([sleeper(SLEEP)], warmup=0, iters=50, device='cpu',
                          max_seconds=SLEEP / 2, memory=False)
    assert len(capped.seconds) == MIN_TIMED_CALLS  # the cap is spent after the first call


@pytest.mark.parametrize('kwargs', [dict(iters=0), dict(warmup=-1), dict(rounds=0)])
def test_time_calls_refuses_impossible_requests(kwargs):
    from repseg.errors import UserError

    settings = {**dict(warmup=0, iters=1, rounds=1), **kwargs}
    with pytest.raises(UserError, match='need iters >= 1'):
        time_calls([sleeper(0)], device='cpu', **settings)


def hand_record(name, seconds, batch=2, fused=None, **fields):
    """A record from per-call seconds, with every other field written here."""
    values = dict(name=name, config='c.py', arch='A0', task='segmentation', fused=fused,
                  dtype='float32', channels_last=False, shape=[8, 16], device='cpu',
                  backend='pytorch', params_m=1.0, tf32=None, fast_pooling=None,
                  environment=dict(torch_version='t', device_name='cpu x', cpu_threads=1,
                                   cuda_version=None, cudnn_version=None))
    values.update(fields)
    return make_record(Timing(list(seconds), 12.0), batch, 1, **values)


def test_record_statistics_from_hand_written_times():
    record = hand_record('m', [0.1, 0.2, 0.3, 0.4], gflops=5.0)
    assert record.fps == pytest.approx(2 * 4 / 1.0)
    assert record.latency_ms_median == pytest.approx(250.0)
    assert record.latency_ms_p90 == pytest.approx(370.0)  # 0.3 + 0.7 * (0.4 - 0.3)
    assert record.latency_ms_min == pytest.approx(100.0) and record.iters == 4
    assert record.tflops == pytest.approx(2 * 5.0 * 8 / 1000)
    assert record.peak_mem_mb == 12.0 and record.warmup == 1


def test_ratios_and_json_of_hand_written_records(tmp_path):
    records = add_ratios([hand_record('slow', [0.2], fused=False),
                          hand_record('fast', [0.1], fused=True, label_agreement=0.5)])
    assert [r.fps_ratio for r in records] == [1.0, 2.0]
    assert records[1].speedup_vs_train_time == 2.0 and records[0].speedup_vs_train_time is None
    out = tmp_path / 'r.json'
    records_to_json(records, out)
    written = json.loads(out.read_text())
    assert written[1]['label_agreement'] == 0.5 and written[1]['device_name'] == 'cpu x'
    assert 'environment' not in written[0]
    # fields of the matrix and the call-path comparison only where set
    assert not {'group', 'variant', 'options', 'build_s'} & written[0].keys()
    records[0].group, records[0].variant = 'fp32', 'predict'
    assert {'group': 'fp32', 'variant': 'predict'}.items() <= records[0].to_dict().items()


def test_tables_from_hand_written_records():
    assert markdown_table(('a', 'long header'), [('x', 1), ('wide cell', 22)]) == (
        '| a         | long header |\n'
        '|-----------|-------------|\n'
        '| x         | 1           |\n'
        '| wide cell | 22          |')
    records = add_ratios([hand_record('first', [0.5]), hand_record('second', [0.25],
                                                                   label_agreement=0.875)])
    rows = records_table(records).splitlines()
    assert rows[0].startswith('| model ') and len(rows) == 4
    assert '| 4.00 ' in rows[2] and '| 8.00 ' in rows[3] and '| 2.00x ' in rows[3]
    assert agreement_lines(records, 'first') == [
        'second: 87.50% of pixels labelled as by first']


def test_timed_segmentors_get_calibrated_batch_norms():
    """The stem's BN holds the mean and variance of its conv's output on the calibration
    batch, computed here in float64; every BN got random affine parameters."""
    import torch
    import torch.nn.functional as F

    from repseg.speed.models import build_segmentor_to_time, smooth_inputs

    shape = (32, 64)
    model = build_segmentor_to_time(TINY_CONFIG, calibration_shape=shape)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(bool((n.weight == 1).all()) for n in norms)
    stem = model.backbone.stem.conv3x3
    inputs = smooth_inputs(2, shape, 'cpu', seed=1).double()
    out = F.conv2d(inputs, stem.conv.weight.double(), None, stem.conv.stride,
                   stem.conv.padding, stem.conv.dilation, stem.conv.groups)
    torch.testing.assert_close(stem.bn.running_mean.double(), out.mean((0, 2, 3)),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stem.bn.running_var.double(),
                               out.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert not model.training


@pytest.fixture(scope='module')
def scanner():
    """tools/import_cycles.py (a script, not a package)."""
    spec = importlib.util.spec_from_file_location('import_cycles',
                                                  ROOT / 'tools' / 'import_cycles.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repseg_has_no_import_cycle(scanner):
    """Function-level and TYPE_CHECKING imports count (tools/import_cycles.py)."""
    graph = scanner.import_graph(ROOT / 'repseg')
    assert 'repseg.speed.timing' in graph['repseg.speed.record']  # the scan sees imports
    assert 'repseg.mmseg.builder' in graph['repseg.speed.models']  # ... in functions too
    assert scanner.cycles(graph) == []
    assert scanner.cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_fast_inference_never_imports_the_speed_code(scanner):
    graph = scanner.import_graph(ROOT / 'repseg')
    for module, targets in graph.items():
        if module.startswith('repseg.fast_inference'):
            assert not {t for t in targets if t.startswith('repseg.speed')}, module


def test_int8_with_a_checkpoint_is_a_user_error(tmp_path, capsys):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'not a protobuf')
    with pytest.raises(SystemExit) as exit_info:
        load_tool('benchmark').main([str(TINY_CONFIG), '--device', 'cpu', '--int8',
                                     str(checkpoint)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --int8 ') and 'expected an .onnx model' in err
    assert 'CHECKPOINT' in err and 'Traceback' not in err


def test_an_onnx_file_that_is_not_onnx_is_a_user_error(tmp_path):
    from repseg.onnx_backend import OnnxGraph, OnnxModelError

    fake = tmp_path / 'fake.onnx'
    fake.write_bytes(b'not a protobuf')
    with pytest.raises(OnnxModelError, match='is not an ONNX model'):
        OnnxGraph(fake)


@pytest.mark.parametrize('argv, message', [
    (['--matrix', str(TINY_CONFIG)], '--matrix has its own models'),
    (['--smoke', str(TINY_CONFIG)], 'only --matrix takes --smoke'),
    ([str(TINY_CONFIG), '--variants', '--compare', str(TINY_CONFIG)], 'drop --compare'),
    ([str(TINY_CONFIG), '--rounds', '3'], '--rounds and --compile go with --variants'),
    (['--matrix', '--rounds', '3'], 'drop --rounds'),
])
def test_benchmark_modes_refuse_each_others_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('benchmark').main([*argv, '--device', 'cpu'])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
