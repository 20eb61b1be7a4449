"""tools/gpu_check.sh refused or stopped before it runs a step leaves nothing in TMPDIR:
its temporary install log is removed by the script (stopped during the wheel install)
or by gpu_check.py (bad arguments, a refused OUT_DIR). No step runs here (the smoke is
tests/test_gpu_check.py)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(tmp_path: Path, *argv: str, python: str = sys.executable):
    """tools/gpu_check.sh ``argv`` with a TMPDIR of its own (returned with the result)."""
    tmpdir = tmp_path / 'tmpdir'
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHON=python, REPSEG_SITE=str(tmp_path / 'site'))
    result = subprocess.run(['bash', str(ROOT / 'tools/gpu_check.sh'), *argv],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    return result, tmpdir


@pytest.mark.parametrize('case', ['OUT_DIR below a file', 'bad --budget'])
def test_refused_arguments_leave_nothing_in_tmpdir(tmp_path, case):
    (tmp_path / 'a_file').write_text('not a folder')
    out_dir = tmp_path / 'a_file' / 'out'
    if case == 'bad --budget':
        argv, said = ['--budget', 'soon', str(tmp_path / 'out')], \
            "argument --budget: invalid float value: 'soon'"
    else:
        argv, said = [str(out_dir)], (f"error: OUT_DIR '{out_dir}' cannot be created: "
                                      f"'{tmp_path / 'a_file'}' is a file, not a folder")
    result, tmpdir = gpu_check(tmp_path, *argv)
    assert result.returncode == 2, result.stderr[-2000:]
    assert said in result.stderr and 'Traceback' not in result.stderr
    assert list(tmpdir.iterdir()) == []
    assert not out_dir.exists() and not (tmp_path / 'out').exists()


def test_stopped_during_the_wheel_install_leaves_nothing_in_tmpdir(tmp_path):
    """SIGTERM (a scheduler stopping the job) while pip installs the wheels: an
    interpreter that stops its caller, the script, stands in for pip."""
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    (wheels / 'fake-0-py3-none-any.whl').write_bytes(b'')
    python = tmp_path / 'python'
    python.write_text('#!/bin/sh\nkill -TERM "$PPID"\n')
    python.chmod(0o755)
    result, tmpdir = gpu_check(tmp_path, str(tmp_path / 'out'), '--wheels', str(wheels),
                               python=str(python))
    assert result.returncode == -signal.SIGTERM, result.stderr[-2000:]
    assert 'installing' in result.stdout  # it was stopped in the install, not before
    assert list(tmpdir.iterdir()) == []
