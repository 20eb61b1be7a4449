"""Runs that must not break later than they should: ``--resume`` checks what it would
continue from, one training per work dir (a lock a crash does not leave stuck), and
SIGTERM cleans up like Ctrl-C (atomic writes, the demo's running tool)."""
import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from repseg.fileio import write_atomically, write_bytes_atomically
from repseg.mmseg import workdir
from repseg.mmseg.builder import build_segmentor, load_config
from test_config_values import assert_one_error as assert_refused, run_tool_now
from tiny_models import toy_options

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / 'configs/demo/pspnet_repvgg_a0_toycity.py'


@pytest.fixture(scope='module')
def toy(city_copy, tmp_path_factory):
    return city_copy(tmp_path_factory.mktemp('run_safety'))


@pytest.fixture(scope='module')
def state(toy):
    """A whole-segmentor state dict of the model ``toy_options`` builds."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_segmentor(load_config(DEMO_CONFIG, toy_options(toy))).state_dict()


def options_cli(options: dict) -> list:
    return ['--cfg-options', *(f'{k}={v}' for k, v in options.items())]


def fingerprint(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def work_dir_with(folder: Path, state: dict, pointer: str, truncated=('iter_4.pth',)) -> Path:
    """A work dir as a crash leaves it: intact iter_2.pth, ``truncated`` cut short, and
    ``last_checkpoint`` naming ``pointer``."""
    folder.mkdir()
    for name in ('iter_2.pth', 'iter_4.pth'):
        torch.save({'state_dict': state, 'meta': {'iter': int(name[5])}}, folder / name)
        if name in truncated:
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[:len(data) // 2])
    (folder / 'last_checkpoint').write_text(str(folder / pointer))
    return folder


def train_resume(capsys, toy, work_dir, **extra):
    options = {**toy_options(toy), 'train_cfg.max_iters': 6, **extra}
    return run_tool_now('train', [str(DEMO_CONFIG), '--work-dir', str(work_dir), '--resume',
                              *options_cli(options)], capsys)


def test_resume_from_a_deleted_checkpoint_offers_the_newest_intact_one(toy, state, tmp_path,
                                                                       capsys):
    work_dir = work_dir_with(tmp_path / 'work', state, 'iter_6.pth')
    before = fingerprint(work_dir)
    status, err = train_resume(capsys, toy, work_dir)
    assert_refused(status, err, f'--resume: {work_dir}/last_checkpoint names '
                                f'{work_dir}/iter_6.pth, which does not exist',
                   f'Checkpoints that survive in {work_dir}: iter_2.pth, iter_4.pth; the '
                   'newest intact one is iter_2.pth. Resume from it with --resume '
                   f'--cfg-options load_from={work_dir}/iter_2.pth')
    assert fingerprint(work_dir) == before


def test_resume_from_a_truncated_checkpoint_is_named(toy, state, tmp_path, capsys):
    work_dir = work_dir_with(tmp_path / 'work', state, 'iter_4.pth')
    before = fingerprint(work_dir)
    status, err = train_resume(capsys, toy, work_dir)
    assert_refused(status, err, f'names {work_dir}/iter_4.pth, which cannot be read',
                   'truncated', 'the newest intact one is iter_2.pth')
    assert fingerprint(work_dir) == before


def test_resume_with_nothing_intact_says_so(toy, state, tmp_path, capsys):
    work_dir = work_dir_with(tmp_path / 'work', state, 'iter_4.pth',
                             truncated=('iter_2.pth', 'iter_4.pth'))
    status, err = train_resume(capsys, toy, work_dir)
    assert_refused(status, err, f'No intact checkpoint survives in {work_dir} (iter_2.pth: '
                                'none readable): train without --resume')


def test_resume_into_a_changed_model_is_refused_before_the_runner(toy, state, tmp_path,
                                                                  capsys):
    work_dir = work_dir_with(tmp_path / 'work', state, 'iter_2.pth', truncated=())
    before = fingerprint(work_dir)
    status, err = train_resume(capsys, toy, work_dir, **{'model.decode_head.channels': 24})
    assert_refused(status, err, f'names {work_dir}/iter_2.pth, whose weights do not fit the '
                                'model of the config', 'decode_head.',
                   'the config changed since the checkpoint was written')
    assert fingerprint(work_dir) == before


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    yield process.pid
    process.kill()
    process.wait()


def test_second_training_in_a_work_dir_is_refused(toy, tmp_path, capsys, live_process):
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / workdir.LOCK_FILE).write_text(f'{live_process} {socket.gethostname()}\n')
    before = fingerprint(work_dir)
    status, err = run_tool_now('train', [str(DEMO_CONFIG), '--work-dir', str(work_dir),
                                     *options_cli({**toy_options(toy),
                                                   'train_cfg.max_iters': 1})], capsys)
    assert_refused(status, err, f"work dir '{work_dir}' is in use by another training "
                                f'(process {live_process} on {socket.gethostname()}')
    assert fingerprint(work_dir) == before


has_proc = pytest.mark.skipif(not Path('/proc/self/stat').is_file(),
                              reason='no /proc: locks hold only pid and host')


def proc_start(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat``, the start time (the processes here have names
    without spaces, so the fields split plainly)."""
    return int(Path(f'/proc/{pid}/stat').read_text().split()[21])


def my_lock_line() -> str:
    """What this process writes into a lock: with its start time where /proc has it."""
    start = f' {proc_start(os.getpid())}' if Path('/proc/self/stat').is_file() else ''
    return f'{os.getpid()} {socket.gethostname()}{start}\n'


def busy_message(work_dir: Path, pid: int) -> str:
    return (f"work dir '{work_dir}' is in use by another training (process {pid} on "
            f'{socket.gethostname()}; lock file {work_dir / workdir.LOCK_FILE}): two runs '
            'would interleave their checkpoints. Wait for it to end (or stop it), or give '
            'another --work-dir')


@pytest.fixture
def logged(monkeypatch):
    messages = []
    monkeypatch.setattr(workdir, 'print_log', lambda msg, **kw: messages.append(msg))
    return messages


def test_lock_of_a_dead_run_is_taken_over_and_released(tmp_path, logged):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    lock = tmp_path / workdir.LOCK_FILE
    lock.write_text(f'{dead.pid} {socket.gethostname()}\n')
    with workdir.work_dir_lock(tmp_path):
        assert lock.read_text() == my_lock_line()
        with pytest.raises(workdir.WorkDirBusyError, match=f'process {os.getpid()}'):
            with workdir.work_dir_lock(tmp_path):
                pass
    assert not lock.exists()
    assert logged == [f'work dir lock {lock} was left by process {dead.pid} on '
                      f'{socket.gethostname()}, which no longer runs: taking it over']


@has_proc
@pytest.mark.parametrize('holder', ['sleep', 'this test'])
def test_lock_whose_pid_now_names_another_process_is_taken_over(tmp_path, logged, holder):
    """A crashed run's process id given to another process (a ``sleep``, or this test
    itself): alive, but started at another time than the lock says."""
    sleeper = subprocess.Popen(['sleep', '60']) if holder == 'sleep' else None
    try:
        pid = sleeper.pid if sleeper else os.getpid()
        lock = tmp_path / workdir.LOCK_FILE
        lock.write_text(f'{pid} {socket.gethostname()} {proc_start(pid) - 1}\n')
        with workdir.work_dir_lock(tmp_path):
            assert lock.read_text() == my_lock_line()
    finally:
        if sleeper:
            sleeper.kill()
            sleeper.wait()
    assert not lock.exists()
    assert logged == [f'work dir lock {lock} was left by process {pid} on '
                      f'{socket.gethostname()}, which no longer runs (its process id now '
                      'names another process, started since): taking it over']


@has_proc
def test_lock_of_a_live_run_with_its_start_time_is_refused(tmp_path, live_process, logged):
    lock = tmp_path / workdir.LOCK_FILE
    written = f'{live_process} {socket.gethostname()} {proc_start(live_process)}\n'
    lock.write_text(written)
    with pytest.raises(workdir.WorkDirBusyError) as refused:
        with workdir.work_dir_lock(tmp_path):
            pass
    assert str(refused.value) == busy_message(tmp_path, live_process)
    assert lock.read_text() == written and logged == []


def test_old_lock_and_one_without_proc_hold_pid_and_host(tmp_path, live_process,
                                                         monkeypatch, logged):
    """A lock of an older version (no start time) is read: a live pid refuses, a dead one
    is taken over. Without /proc (not Linux) the lock holds pid and host, and a live pid
    is the run whatever start time a lock says."""
    lock = tmp_path / workdir.LOCK_FILE
    lock.write_text(f'{live_process} {socket.gethostname()}\n')
    with pytest.raises(workdir.WorkDirBusyError) as refused:
        with workdir.work_dir_lock(tmp_path):
            pass
    assert str(refused.value) == busy_message(tmp_path, live_process)
    monkeypatch.setattr(workdir, 'PROC', tmp_path / 'no_proc')
    lock.write_text(f'{live_process} {socket.gethostname()} 1\n')
    with pytest.raises(workdir.WorkDirBusyError, match=f'process {live_process} on'):
        with workdir.work_dir_lock(tmp_path):
            pass
    lock.unlink()
    with workdir.work_dir_lock(tmp_path):
        assert lock.read_text() == f'{os.getpid()} {socket.gethostname()}\n'
    assert not lock.exists() and logged == []


def test_lock_of_another_machine_is_not_taken_over(tmp_path):
    (tmp_path / workdir.LOCK_FILE).write_text('1 some-other-host\n')
    with pytest.raises(workdir.WorkDirBusyError, match='on another machine'):
        with workdir.work_dir_lock(tmp_path):
            pass


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f'{path} did not appear'
        time.sleep(0.05)


def test_sigterm_during_an_atomic_write_removes_the_temporary_file(tmp_path):
    """A real process killed mid-write, as a cluster scheduler stops a job."""
    target, started = tmp_path / 'iter_2.pth', tmp_path / 'started'
    script = textwrap.dedent(f'''
        import time
        from pathlib import Path
        from repseg.fileio import write_atomically

        def slow_write(tmp):
            Path(tmp).write_bytes(b'half a checkpoint')
            Path({str(started)!r}).touch()
            time.sleep(60)

        write_atomically({str(target)!r}, slow_write)
    ''')
    process = subprocess.Popen([sys.executable, '-c', script])
    wait_for(started)
    assert [p.name for p in tmp_path.glob('.*.tmp')] == [f'.iter_2.pth.{process.pid}.tmp']
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ['started']


def default_sigint():
    """Ctrl-C as in a terminal, also where the test runs in the background (SIGINT
    ignored, which children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_atomic_write_gives_back_the_sigterm_handler_it_found(tmp_path):
    """The write's own handler lasts as long as the write: a tool's or a launcher's
    handler is in place again afterwards, also after a failed write."""
    def tools_handler(signum, frame):
        pass

    def disk_full(tmp):
        assert signal.getsignal(signal.SIGTERM) is not tools_handler
        raise OSError('disk full')

    previous = signal.signal(signal.SIGTERM, tools_handler)
    try:
        write_bytes_atomically(tmp_path / 'a.bin', b'data')
        assert signal.getsignal(signal.SIGTERM) is tools_handler
        with pytest.raises(OSError, match='disk full'):
            write_atomically(tmp_path / 'b.bin', disk_full)
        assert signal.getsignal(signal.SIGTERM) is tools_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_stopped_demo_stops_its_running_tool(tmp_path, signum):
    """tools/demo.py (a copy, so that its first step runs a stand-in tool in a scratch
    folder) is stopped while a tool runs: the tool is stopped too (SIGTERM) or, after
    Ctrl-C, waited for, and has the time to clean up."""
    (tmp_path / 'tools').mkdir()
    (tmp_path / 'tools' / 'demo.py').write_text((ROOT / 'tools' / 'demo.py').read_text())
    (tmp_path / 'tools' / 'make_toy_cityscapes.py').write_text(textwrap.dedent('''
        import os, signal, sys, time
        from pathlib import Path

        def stopped(signum, frame):
            time.sleep(1)  # cleaning up
            Path('stopped_by').write_text(signal.Signals(signum).name)
            sys.exit(1)

        signal.signal(signal.SIGTERM, stopped)
        signal.signal(signal.SIGINT, stopped)
        Path('tool.pid').write_text(str(os.getpid()))
        time.sleep(60)
    '''))
    demo = subprocess.Popen([sys.executable, str(tmp_path / 'tools' / 'demo.py')],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            preexec_fn=default_sigint, start_new_session=True)
    wait_for(tmp_path / 'tool.pid')
    tool = int((tmp_path / 'tool.pid').read_text())
    if signum == signal.SIGINT:  # Ctrl-C: the terminal signals the whole process group
        os.killpg(demo.pid, signum)
    else:  # kill PID, a scheduler's stop: the demo only
        demo.send_signal(signum)
    status = demo.wait(timeout=60)
    assert status == (128 + signum if signum == signal.SIGTERM else 130), demo.stderr.read()
    assert (tmp_path / 'stopped_by').read_text() == signum.name  # it could clean up
    with pytest.raises(ProcessLookupError):
        os.kill(tool, 0)


def test_the_offered_load_from_is_what_resume_then_checks(toy, state, tmp_path):
    """Following the advice (``--resume --cfg-options load_from=iter_2.pth``) passes the
    check although ``last_checkpoint`` still names the deleted file; a broken
    ``load_from`` is named as such."""
    from repseg.mmseg.config import prepare_config

    work_dir = work_dir_with(tmp_path / 'work', state, 'iter_6.pth')
    for name, refusal in (('iter_2.pth', None), ('iter_4.pth', 'which cannot be read')):
        cfg = prepare_config(DEMO_CONFIG, {**toy_options(toy),
                                           'load_from': str(work_dir / name)}, str(work_dir))
        cfg.resume = True
        if refusal is None:
            workdir.check_resume(cfg)
        else:
            with pytest.raises(workdir.ResumeError,
                               match=f'--resume: load_from={work_dir / name}, {refusal}'):
                workdir.check_resume(cfg)


def test_resume_check_builds_a_classifier_from_mmpretrain(tmp_path):
    """Classification training runs through the same ``run_train``: its model is built
    from mmpretrain's registry (mmseg's has no ImageClassifier)."""
    from repseg.mmseg.config import prepare_config
    from repseg.mmseg.preflight import config_problems

    cfg = prepare_config(ROOT / 'configs/classification/repvgg_a0_toy.py', None,
                         str(tmp_path / 'work'))
    assert config_problems(cfg, 'train') == []  # registers mmpretrain's modules
    state = workdir._model_state(cfg)
    assert any(key.startswith('head.') for key in state)
    work_dir = work_dir_with(tmp_path / 'work', {**state, 'head.fc.weight': torch.zeros(3, 3)},
                             'iter_2.pth', truncated=())
    cfg.resume = True
    with pytest.raises(workdir.ResumeError, match="head.fc.weight"):
        workdir.check_resume(cfg)
    torch.save({'state_dict': state}, work_dir / 'iter_2.pth')
    workdir.check_resume(cfg)
