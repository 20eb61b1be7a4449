"""tools/gpu_check.sh: the CPU smoke end to end, step failures and time limits, the target
verdicts and the dry-run plan."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from repseg.gpu_check import GpuCheck
from repseg.gpu_check.layout import StepResult
from repseg.gpu_check.steps import Step
from repseg.speed.matrix import PREDICT, Key, full_plan, plan_keys, smoke_plan
from repseg.speed.goals import GOALS, evaluate, keys_to_profile
from repseg.speed.report import matrix_markdown

ROOT = Path(__file__).resolve().parents[1]
ALL_STEPS = ['environment', 'matrix', 'profile', 'toy-city', 'train', 'resume', 'test',
             'test-fp16', 'deploy', 'infer', 'export', 'pytest-cuda']
#: The smoke steps CI runs: the new code paths (the matrix, targets, profiles, the one-process
#: torchrun training with a SyncBN config, summary and archive). Each step is a fresh
#: process paying 5-10 s of imports on 2 cores, so the other steps (tools that their own
#: tests cover: resume in test_dist_resume.py, ...) are left to the full smoke,
#: `tools/gpu_check.sh --smoke OUT` (12 steps, about 190 CPU seconds).
CI_STEPS = ['matrix', 'profile', 'toy-city', 'train']
OUT_FILES = ['logs.tar.gz', 'profile.txt', 'results.json', 'summary.md']


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """One run of ``tools/gpu_check.sh --smoke --steps CI_STEPS``."""
    out, work = tmp_path_factory.mktemp('out'), tmp_path_factory.mktemp('work')
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1')
    result = subprocess.run(['bash', str(ROOT / 'tools/gpu_check.sh'), '--smoke', str(out),
                             '--work-dir', str(work), '--steps', ','.join(CI_STEPS)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    results = json.loads((out / 'results.json').read_text())
    return dict(result=result, out=out, work=work, results=results,
                summary=(out / 'summary.md').read_text())


def test_smoke_runs_every_step_and_writes_four_files(smoke):
    result, results = smoke['result'], smoke['results']
    statuses = {step['name']: step['status'] for step in results['steps']}
    assert result.returncode == 0, (statuses, result.stdout[-4000:], result.stderr[-2000:])
    assert list(statuses) == CI_STEPS and set(statuses.values()) == {'ok'}
    assert sorted(p.name for p in smoke['out'].iterdir()) == OUT_FILES
    assert results['complete'] is True and results['mode'] == 'smoke'
    with tarfile.open(smoke['out'] / 'logs.tar.gz') as archive:
        names = set(archive.getnames())
    assert {f"logs/{step['log']}" for step in results['steps']} <= names
    assert {'logs/matrix.json', 'logs/00_install.log'} <= names


def test_smoke_pipeline_steps_did_their_job(smoke):
    steps = {step['name']: step for step in smoke['results']['steps']}
    train = steps['train']['details']
    assert train['finite_loss'] and train['checkpoint'] and train['checkpoint_iter'] == 2
    assert [i for i, _ in train['losses']] == [1, 2]
    assert 'BatchNorm2d' in train['norm_layers']  # SyncBN config, converted on the CPU


def test_smoke_matrix_covers_the_plan_and_judges_every_target(smoke):
    matrix = smoke['results']['matrix']
    plan = smoke_plan()
    expected = {(k.group, k.role, k.variant, k.fused)
                for spec in plan.models for k in plan_keys(spec, plan)}
    measured = {(r['group'], r['role'], r['variant'], r['fused']) for r in matrix['records']}
    assert measured == expected and not matrix['errors'] and matrix['finished']
    assert matrix['matmul']['tflops'] > 0
    targets = smoke['results']['targets']
    assert [t['name'] for t in targets] == [t.name for t in GOALS]
    assert all(t['met'] in (True, False) and t['value'] > 0 for t in targets)
    summary = smoke['summary']
    assert 'CPU smoke run' in summary and '## Targets' in summary
    for target in GOALS:
        assert target.text in summary
    profile = (smoke['out'] / 'profile.txt').read_text()
    assert 'Self CPU' in profile and 'aten::' in profile


def test_failures_and_time_limits_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    python = sys.executable
    steps = [Step('crash', 'exits 3', [python, '-c', 'import sys; sys.exit(3)'], 30, 0.1),
             Step('hang', 'sleeps', [python, '-c', 'import time; time.sleep(60)'], 1.5, 0.1),
             Step('fine', 'prints', [python, '-c', 'print("hello")'], 30, 0.1),
             Step('late', 'does not fit', [python, '-c', 'print(1)'], 100, 50)]
    check = GpuCheck(tmp_path / 'out', tmp_path / 'work', smoke=True, budget=60,
                     echo=lambda message: None)
    monkeypatch.setattr(check, 'steps', lambda: steps)
    assert check.run() == 1
    results = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert [(s['name'], s['status']) for s in results['steps']] == [
        ('crash', 'failed'), ('hang', 'timeout'), ('fine', 'ok'), ('late', 'skipped')]
    assert results['steps'][0]['returncode'] == 3
    with tarfile.open(tmp_path / 'out' / 'logs.tar.gz') as archive:
        log = archive.extractfile('logs/03_fine.log').read().decode()
    assert 'hello' in log
    summary = (tmp_path / 'out' / 'summary.md').read_text()
    assert '**timeout**' in summary and 'time budget' in summary and 'Run complete' in summary


def test_pytest_step_without_its_report_reads_each_outcome_from_the_log(tmp_path):
    """A pytest step killed at its limit writes no XML report: its log must still name every
    test's outcome under the repository's pytest.ini (whose ``-q`` once cancelled ``-v``)."""
    (tmp_path / 'test_outcomes.py').write_text(
        'import pytest\npytestmark = pytest.mark.cuda\n\n'
        'def test_passes():\n    pass\n\n'
        'def test_fails():\n    assert 1 == 2\n\n'
        'def test_skips():\n    pytest.skip("needs a GPU")\n')
    check = GpuCheck(tmp_path / 'out', tmp_path / 'work', smoke=True, echo=lambda message: None)
    step = next(step for step in check.steps() if step.name == 'pytest-cuda')
    report = step.command.index('--junitxml')
    command = step.command[:report] + step.command[report + 2:-1] + [
        '-c', str(ROOT / 'pytest.ini'), '--rootdir', str(tmp_path),
        str(tmp_path / 'test_outcomes.py')]
    check.prepare()
    result = StepResult(step.name, step.title)
    check.run_step(1, Step(step.name, step.title, command, 120, 1, step.read), result, 120)
    assert result.details == dict(tests=3, failures=1, errors=0, skipped=1, passed=1,
                                  failed=['test_fails'], report=False), \
        (check.logs / result.log).read_text()[-3000:]
    assert 'read from the log' in result.note


def _record(group, role, fps, variant=PREDICT, fused=None, **extra):
    return dict(group=group, role=role, variant=variant, fused=fused, fps=fps,
                name=f'{role} {group}', label=role, latency_ms_median=1000 / fps,
                latency_ms_p90=1000 / fps, peak_mem_mb=100.0, batch=1, shape=[8, 8],
                dtype='float16', **extra)


def test_targets_from_records():
    records = [_record('fp32', 'r101', 10.0), _record('fp16cl', 'r101', 25.0),
               _record('fp16cl', 'b2', 31.0, fused=True),
               _record('options', 'b2', 40.0, '+cuda_graph', True),
               _record('options', 'r101', 30.0, '+cuda_graph'),
               _record('fp32', 'b2', 14.0, fused=True), _record('fp32', 'b2', 10.0, fused=False),
               _record('backbone', 'b2', 50.0, 'backbone', True, gflops=2000.0, tflops=200.0),
               _record('paper', 'b1g2_fast', 5.0, fused=True), _record('paper', 'r50', 5.0),
               _record('paper', 'b2_fast', 3.0, fused=True), _record('paper', 'r101', 3.0)]
    verdicts = {v.name: v for v in evaluate(dict(records=records, matmul=dict(tflops=400.0,
                                                                               n=8)))}
    first = verdicts['b2_fp16_vs_r101_fp32']
    assert first.value == pytest.approx(3.1) and first.met is True
    assert first.option_value == pytest.approx(4.0) and first.option_met is True
    second = verdicts['b2_vs_r101_fp16']
    assert second.value == pytest.approx(1.24) and second.met is False
    assert second.option_variant == '+cuda_graph'  # the same path for R-101-D8
    assert second.option_value == pytest.approx(40 / 30) and second.option_met is True
    assert verdicts['fused_vs_train_time_b2'].met is True  # exactly 1.4x
    assert verdicts['fused_vs_train_time_b1g2'].met is None  # not measured
    assert verdicts['b2_backbone_peak'].value == pytest.approx(0.5)
    assert verdicts['b2_backbone_peak'].met is False
    assert verdicts['paper_b1g2_fast_vs_r50'].met is False  # equal is not faster
    assert verdicts['paper_b2_fast_vs_r101'].met is True  # equal is as fast
    keys = keys_to_profile(verdicts.values())
    assert Key('fp16cl', 'r101', PREDICT, None) in keys
    assert Key('paper', 'r50', PREDICT, None) in keys and len(keys) == len(set(keys))
    assert Key('fp32', 'r101', PREDICT, None) not in keys  # its target was met
    tables = matrix_markdown(dict(records=records, plan={}), list(verdicts.values()))
    assert '**NOT met**' in tables and 'not measured' in tables


def test_dry_run_lists_steps_limits_and_sizes(tmp_path, capsys):
    check = GpuCheck(tmp_path / 'out', tmp_path / 'work', budget=540)
    plan_text = check.describe_plan()
    for name in ALL_STEPS:
        assert f'. {name} (' in plan_text
    assert 'dist_train.sh' in plan_text and '--amp' in plan_text
    assert 'frame=(512, 1024)' in plan_text and full_plan().describe() in plan_text
    assert not (tmp_path / 'out').exists()  # nothing written
    total = sum(step.timeout for step in check.steps())
    expected = sum(step.expected for step in check.steps())
    assert expected < 540 < total  # limits leave room, the budget caps the sum


def test_environment_probe_reports_versions_and_imports():
    import torch

    from repseg.gpu_check.environment import PROBED_IMPORTS, probe_environment
    env = probe_environment()
    assert env['torch'] == torch.__version__ and env['cuda_available'] is False
    assert list(env['imports']) == list(PROBED_IMPORTS)
    assert env['imports']['repseg'] is True and env['imports']['distutils.errors'] is True
    assert env['mmseg_version'] and env['device_name']


def test_out_dir_below_a_file_is_a_user_error_and_writes_nothing(tmp_path, capsys):
    """An OUT_DIR that cannot be created: one error (exit 2) before any folder is made
    (the default work dir in the checkout included)."""
    from tiny_models import load_tool

    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    default_work = ROOT / 'work_dirs' / 'gpu_check'
    before = sorted(default_work.rglob('*')) if default_work.exists() else None
    with pytest.raises(SystemExit) as exit_info:
        load_tool('gpu_check').main(['--smoke', str(blocker / 'out')])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: OUT_DIR ') and 'is a file' in err
    assert sorted(tmp_path.iterdir()) == [blocker]
    assert (sorted(default_work.rglob('*')) if default_work.exists() else None) == before
