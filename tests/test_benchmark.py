"""tools/benchmark.py: records, JSON, CLI errors, and fused RepVGG beating train-time."""
import json

import pytest

from repseg.speed.benchmark import (BenchmarkSettings, benchmark_classifiers,
                                    benchmark_pooling, benchmark_segmentors)
from repseg.speed.report import records_table
from tiny_models import TINY_CONFIG, load_tool, one_cpu_thread  # noqa: F401  (fixture)

JSON_FIELDS = {'name', 'config', 'arch', 'fused', 'dtype', 'channels_last', 'batch', 'shape',
               'device', 'fps', 'latency_ms_median', 'latency_ms_p90', 'peak_mem_mb',
               'gflops', 'tflops', 'torch_version', 'device_name'}
pytestmark = pytest.mark.usefixtures('one_cpu_thread')


def test_cli_times_tiny_segmentor_and_writes_json(tmp_path):
    out = tmp_path / 'bench.json'
    argv = f'{TINY_CONFIG} --shape 32 48 --iters 2 --warmup 1 --device cpu --threads 1'
    load_tool('benchmark').main([*argv.split(), '--with-train-time', '--json', str(out)])
    records = json.loads(out.read_text())
    assert [r['fused'] for r in records] == [False, True]
    for record in records:
        assert JSON_FIELDS <= record.keys()
        assert record['shape'] == [32, 48] and record['batch'] == 1
        assert record['dtype'] == 'float32' and record['device'] == 'cpu'
        assert record['fps'] > 0 and record['latency_ms_p90'] >= record['latency_ms_min']
        assert record['gflops'] > 0 and record['tflops'] > 0
    # fusion removes the 1x1 and identity branches: fewer multiply-adds
    assert records[1]['gflops'] < records[0]['gflops']
    assert records[1]['speedup_vs_train_time'] == pytest.approx(
        records[1]['fps'] / records[0]['fps'])


def test_fp16_channels_last_segmentor_runs_on_cpu():
    settings = BenchmarkSettings(shape=(32, 48), batch=2, fp16=True, channels_last=True,
                                 warmup=1, iters=1, device='cpu', count_flops=False, threads=1)
    [record] = benchmark_segmentors([TINY_CONFIG], settings)
    assert record.dtype == 'float16' and record.channels_last and record.fused
    assert record.gflops is None and record.tflops is None
    table = records_table([record])
    assert 'pspnet_repvgg_a0_tiny (fused)' in table and '| float16 CL |' in table


def test_pooling_mode_times_both_forms():
    settings = BenchmarkSettings(shape=(64, 96), batch=2, channels_last=True, warmup=1, iters=2,
                                 device='cpu')
    records = benchmark_pooling(16, settings)
    assert [r.fast_pooling for r in records] == [False, True]
    assert records[0].name == 'adaptive_avg_pool2d x4 (16x8x12)'
    assert all(r.task == 'pooling' and r.gflops is None and r.fps > 0 for r in records)


@pytest.mark.parametrize('argv, message', [
    (['--paper', '--fp16', 'x.py'], '--paper'),
    (['configs/missing.py'], 'not found'),
    (['--cls', 'B9'], 'unknown RepVGG arch'),
    ([], 'give a CONFIG'),
    (['--pooling', '0'], 'positive channel count'),
    (['--pooling', '8', '--cls', 'B0'], 'alone'),
])
def test_cli_user_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('benchmark').main([*argv, '--device', 'cpu'])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_fused_repvgg_b0_is_faster_than_train_time():
    """One thread and minimum latencies over rounds: steady under other processes' load
    (measured 1.30-1.36x on a loaded 2-core Xeon). A busy CI neighbour can slow a whole
    round (seen: 1.07x from two rounds), so up to six rounds are timed; the minimum of each
    model's latencies only falls as rounds are added, and the loop stops as soon as the
    ratio is clear."""
    settings = BenchmarkSettings(shape=(64, 64), batch=8, warmup=1, iters=3, device='cpu',
                                 count_flops=False, threads=1)
    best = {}
    for round_index in range(6):
        for record in benchmark_classifiers(['B0'], settings):
            assert record.environment['cpu_threads'] == 1
            best[record.fused] = min(best.get(record.fused, float('inf')), record.latency_ms_min)
        ratio = best[False] / best[True]
        if round_index >= 1 and ratio > 1.15:
            break
    print(f'RepVGG-B0 classifier, batch 8 at 64x64, 1 CPU thread: fused/train-time '
          f'speed {ratio:.2f}x after {round_index + 1} rounds')
    assert ratio > 1.1
