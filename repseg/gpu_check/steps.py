"""The steps of a gpu_check run, each a subprocess with a time limit, and the outputs
rewritten after each of them (see the package docstring)."""
from __future__ import annotations

import contextlib
import json
import os
import traceback
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..fileio import write_atomically, write_text_atomically
from . import readers
from .layout import (GPU_SIZES, LOGS_ARCHIVE, PROFILE, RESULTS, SMOKE_SIZES, SUMMARY,
                     StepResult)
from .summary import summary_markdown

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = 'configs/demo/pspnet_repvgg_a0_toycity_512x1024.py'
SMOKE_TRAIN_CONFIG = 'configs/demo/pspnet_repvgg_a0_toycity.py'
#: Seconds kept back from the budget for the final summary and archive.
RESERVE_SECONDS = 10
#: How often the summary is refreshed while a long step runs.
REFRESH_SECONDS = 20
#: Second try of a torchrun step whose log names NCCL (single-GPU VMs without a network).
NCCL_FALLBACK = dict(NCCL_SOCKET_IFNAME='lo', NCCL_IB_DISABLE='1', NCCL_P2P_DISABLE='1')


@dataclass
class Step:
    """One command with a time limit; ``read`` turns its outputs into the result."""

    name: str
    title: str
    command: list
    timeout: float
    expected: float  # seconds on an H100 machine (the dry run sums them)
    read: Optional[Callable] = None  # read(check, result), from .readers
    env: dict = field(default_factory=dict)
    retry_env: Optional[dict] = None  # second try with these, if the log names NCCL


def _children_cpu_seconds() -> float:
    """CPU time (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return ''


def stop_process_group(process: subprocess.Popen) -> None:
    """End what is left of a step: its process group (started as its own session, so it
    holds only the step's processes). TERM, up to 10 s for the leader, then KILL for all."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


class GpuCheck:
    """The state of one run: plan, results, and the files of ``out_dir``."""

    def __init__(self, out_dir, work_dir=None, smoke: bool = False, budget: float = 540,
                 compile_step: bool = False, only: Optional[list] = None,
                 python: str = sys.executable, echo: Callable[[str], None] = print):
        self.out_dir = Path(out_dir).resolve()
        self.work_dir = Path(work_dir or ROOT / 'work_dirs' / 'gpu_check').resolve()
        self.logs = self.work_dir / 'logs'
        self.smoke = smoke
        self.budget = budget
        self.compile_step = compile_step
        self.only = only
        self.python = python
        self.echo = echo
        self.sizes = SMOKE_SIZES if smoke else GPU_SIZES
        self.device = 'cpu' if smoke else 'cuda'
        self.start = time.perf_counter()
        self.results: list[StepResult] = []
        self.matrix: Optional[dict] = None
        self.compiled: Optional[dict] = None
        self.environment: dict = {}

    # -------------------------------------------------------------------------- the plan

    def path(self, *parts) -> Path:
        return self.work_dir.joinpath(*parts)

    def tool(self, name: str, *args) -> list:
        return [self.python, str(ROOT / 'tools' / name), *map(str, args)]

    def data_options(self) -> list:
        options = [f'{loader}.dataset.data_root={self.path("toy_city")}'
                   for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
        if self.smoke:
            options += [f'{loader}.{key}' for loader in
                        ('train_dataloader', 'val_dataloader', 'test_dataloader')
                        for key in ('num_workers=0', 'persistent_workers=False')]
        return options

    def train_options(self, iters: int) -> list:
        options = self.data_options() + [
            f'train_cfg.max_iters={iters}', 'train_cfg.val_interval=100000',
            f'train_dataloader.batch_size={self.sizes.batch}']
        if self.smoke:  # the CPU demo config with SyncBN turned on, to be converted back
            # (what a SyncBN config does on a machine without CUDA)
            options += ['default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1'] + [
                f'model.{part}.norm_cfg.type=SyncBN'
                for part in ('backbone', 'decode_head', 'auxiliary_head')]
        return options

    @property
    def train_config(self) -> str:
        return str(ROOT / (SMOKE_TRAIN_CONFIG if self.smoke else TRAIN_CONFIG))

    def deploy_files(self) -> tuple[Path, Path]:
        stem = Path(self.train_config).stem + '_deploy'
        return self.path('deploy', f'{stem}.py'), self.path('deploy', f'{stem}.pth')

    def steps(self) -> list[Step]:
        sizes, smoke = self.sizes, self.smoke
        train_cmd = ['bash', str(ROOT / 'tools' / 'dist_train.sh'), self.train_config, '1',
                     '--work-dir', str(self.path('train'))] + ([] if smoke else ['--amp'])
        checkpoint = self.path('train', f'iter_{sizes.total_iters}.pth')
        deploy_cfg, deploy_ckpt = self.deploy_files()
        matrix = ['--matrix', '--force', *(['--smoke'] if smoke else []), '--device',
                  self.device]
        steps = [
            Step('environment', 'versions, GPU, packages', self.tool(
                'gpu_check.py', '--probe-environment'), 90, 10, readers.read_environment),
            Step('matrix', 'benchmark matrix', self.tool(
                'benchmark.py', *matrix, '--json', self.logs / 'matrix.json'), 330, 200,
                readers.read_matrix),
            Step('profile', 'profiles of missed targets', self.tool(
                'benchmark.py', *matrix, '--profile', self.logs / 'matrix.json',
                '--profile-out', self.out_dir / PROFILE,
                *(['--profile-all', '--profile-limit', 1] if smoke else [])), 150, 40,
                readers.read_profile),
            Step('toy-city', f'toy city at {sizes.frame[0]}x{sizes.frame[1]}', self.tool(
                'make_toy_cityscapes.py', self.path('toy_city'), '--train', sizes.train_frames,
                '--val', sizes.val_frames, '--size', *sizes.frame), 90, 10,
                readers.read_toy_city),
            Step('train', f'train {sizes.first_iters} iterations (torchrun, 1 process, SyncBN'
                 + (')' if smoke else ', AMP)'),
                 train_cmd + ['--cfg-options', *self.train_options(sizes.first_iters)],
                 180, 35, readers.read_train, retry_env=NCCL_FALLBACK),
            Step('resume', f'--resume to iteration {sizes.total_iters}',
                 train_cmd + ['--resume', '--cfg-options',
                              *self.train_options(sizes.total_iters)],
                 150, 25, readers.read_resume, retry_env=NCCL_FALLBACK),
            Step('test', 'tools/test.py (fp32)', self.tool(
                'test.py', self.train_config, checkpoint, '--work-dir', self.path('test'),
                '--cfg-options', *self.data_options()), 120, 15, readers.read_test),
            Step('test-fp16', 'tools/test.py --fp16', self.tool(
                'test.py', self.train_config, checkpoint, '--fp16', '--work-dir',
                self.path('test_fp16'), '--cfg-options', *self.data_options()), 120, 15,
                readers.read_test),
            Step('deploy', 'tools/deploy.py (fuse)', self.tool(
                'deploy.py', self.train_config, checkpoint, self.path('deploy')), 90, 10,
                readers.read_deploy),
            Step('infer', f'tools/infer.py --device {self.device}', self.tool(
                'infer.py', deploy_cfg, deploy_ckpt, self.path('toy_city', 'leftImg8bit', 'val'),
                '--out-dir', self.path('infer'), '--device', self.device, '--batch-size', 2,
                '--no-progress'), 90, 12, readers.read_infer),
            Step('export', 'tools/export_onnx.py + onnxruntime check', self.tool(
                'export_onnx.py', deploy_cfg, deploy_ckpt, self.path('model.onnx'), '--shape',
                *sizes.frame), 150, 20, readers.read_export),
            # Last: the longest check, and a budget cut then loses the fewest results (the
            # verbose log keeps each test's outcome even without the XML report).
            Step('pytest-cuda', 'pytest -m cuda', [
                self.python, '-m', 'pytest', '-m', 'cuda', '-o', 'addopts=', '-v', '-rs',
                '-p', 'no:cacheprovider',
                '--junitxml', str(self.logs / 'pytest_cuda.xml'),
                str(ROOT / 'tests' / ('test_cuda.py' if smoke else ''))], 240, 100,
                readers.read_pytest),
        ]
        if self.compile_step and not smoke:
            steps.append(Step('compile', 'torch.compile, all speed options, fp16', self.tool(
                'benchmark.py', *matrix, '--compile', '--json', self.logs / 'compile.json'),
                240, 150, readers.read_compile))
        if self.only:
            steps = [step for step in steps if step.name in self.only]
        return steps

    def describe_plan(self) -> str:
        """The dry run: every step, its command and time limit, and the sizes."""
        from ..speed.matrix import full_plan, smoke_plan

        plan = smoke_plan() if self.smoke else full_plan()
        steps = self.steps()
        lines = [f"gpu_check plan ({'CPU smoke' if self.smoke else 'GPU'}): budget "
                 f'{self.budget:.0f} s, {len(steps)} steps, expected about '
                 f'{sum(s.expected for s in steps):.0f} s on an H100 machine'
                 + (' (the smoke: about a minute on 2 CPU cores)' if self.smoke else ''),
                 f'out: {self.out_dir} ({SUMMARY}, {RESULTS}, {PROFILE}, {LOGS_ARCHIVE})',
                 f'work: {self.work_dir}', f'sizes: {self.sizes}', plan.describe()]
        for index, step in enumerate(steps, 1):
            lines.append(f'{index:2d}. {step.name} ({step.title}): limit {step.timeout:.0f} s, '
                         f'expected {step.expected:.0f} s\n    $ ' + ' '.join(step.command))
        return '\n'.join(lines)

    # --------------------------------------------------------------------------- running

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        self.echo(f'[gpu_check {self.elapsed():6.1f} s] {message}')

    def prepare(self, install_log: Optional[str] = None) -> None:
        for folder in ('train', 'test', 'test_fp16', 'deploy', 'infer', 'toy_city', 'logs'):
            shutil.rmtree(self.path(folder), ignore_errors=True)
        Path(self.path('model.onnx')).unlink(missing_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name in (SUMMARY, RESULTS, PROFILE, LOGS_ARCHIVE):
            (self.out_dir / name).unlink(missing_ok=True)
        if install_log and Path(install_log).is_file():  # a temporary file of gpu_check.sh
            shutil.move(install_log, self.logs / '00_install.log')

    def run(self, install_log: Optional[str] = None) -> int:
        """Run every step; return 0 if all passed, 1 otherwise (outputs written either way)."""
        self.prepare(install_log)
        steps = self.steps()
        self.results = [StepResult(step.name, step.title) for step in steps]
        self.write_outputs()
        for index, (step, result) in enumerate(zip(steps, self.results), 1):
            left = self.budget - self.elapsed() - RESERVE_SECONDS
            if left < min(step.expected, step.timeout):
                result.status, result.note = 'skipped', f'time budget: {left:.0f} s left'
                self.say(f'{index}/{len(steps)} {step.name}: skipped ({result.note})')
                continue
            self.say(f'{index}/{len(steps)} {step.name}: {step.title} (limit '
                     f'{min(step.timeout, left):.0f} s)')
            self.run_step(index, step, result, min(step.timeout, left))
            self.say(f'{index}/{len(steps)} {step.name}: {result.status} in '
                     f'{result.seconds:.1f} s' + (f' - {result.note}' if result.note else ''))
            if result.status != 'ok':
                self.echo(log_tail(self.logs / result.log))
            self.write_outputs()
        self.write_outputs(final=True)
        self.say(f'done: {sum(r.status == "ok" for r in self.results)}/{len(self.results)} '
                 f'steps ok; see {self.out_dir / SUMMARY}')
        return 0 if all(r.status == 'ok' for r in self.results) else 1

    def run_step(self, index: int, step: Step, result: StepResult, timeout: float) -> None:
        result.log = f'{index:02d}_{step.name}.log'
        result.status = 'running'
        started, cpu_before = time.perf_counter(), _children_cpu_seconds()
        returncode = self.launch(step, step.env, self.logs / result.log, timeout)
        if returncode not in (0, None) and step.retry_env and \
                'NCCL' in log_tail(self.logs / result.log, 200):
            left = timeout - (time.perf_counter() - started)
            if left > step.expected:
                self.say(f'{step.name}: NCCL failed; retrying with {step.retry_env}')
                result.details['retried_with'] = step.retry_env
                returncode = self.launch(step, {**step.env, **step.retry_env},
                                         self.logs / result.log, left, append=True)
        result.seconds = round(time.perf_counter() - started, 1)
        result.cpu_seconds = round(_children_cpu_seconds() - cpu_before, 1)
        result.returncode = returncode
        result.status = 'timeout' if returncode is None else 'ok' if returncode == 0 else 'failed'
        if step.read is not None:
            try:
                step.read(self, result)
            except Exception as error:  # noqa: BLE001  (a step's output could not be read)
                result.status = 'failed' if result.status == 'ok' else result.status
                result.note = f'could not read its results: {type(error).__name__}: {error}'
        if result.status == 'timeout':
            result.note = f'killed after {timeout:.0f} s. ' + result.note

    def launch(self, step: Step, env: dict, log_path: Path, timeout: float,
               append: bool = False) -> Optional[int]:
        """Run the command in its own process group, output to ``log_path``; the group is
        killed at ``timeout`` (returns None then)."""
        environ = {**os.environ, 'PYTHONUNBUFFERED': '1', 'PYTHON': self.python,
                   'PORT': str(free_port()), **({'OMP_NUM_THREADS': '1'} if self.smoke else {}),
                   **env}
        environ['PYTHONPATH'] = os.pathsep.join(
            [str(ROOT)] + [p for p in environ.get('PYTHONPATH', '').split(os.pathsep) if p])
        with open(log_path, 'a' if append else 'w') as log:
            log.write('$ ' + ' '.join(map(str, step.command)) + '\n')
            log.flush()
            process = subprocess.Popen(step.command, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=ROOT, env=environ, start_new_session=True)
            deadline = time.perf_counter() + timeout
            try:
                while True:
                    try:
                        return process.wait(timeout=min(REFRESH_SECONDS,
                                                        max(deadline - time.perf_counter(), 0.1)))
                    except subprocess.TimeoutExpired:
                        if time.perf_counter() >= deadline:
                            log.write(f'\n[gpu_check] killed after {timeout:.0f} s\n')
                            return None
                        if step.name == 'matrix':  # keep a partial matrix in the summary
                            readers.read_partial_matrix(self)
                            self.write_outputs()
            finally:
                stop_process_group(process)


    # --------------------------------------------------------------------------- outputs

    def verdicts(self) -> list:
        from ..speed.goals import evaluate

        return evaluate(self.merged_matrix()) if self.matrix else []

    def merged_matrix(self) -> Optional[dict]:
        """The matrix with the compile step's records added (they share the option table)."""
        if not self.matrix:
            return None
        merged = dict(self.matrix)
        if self.compiled:
            merged['records'] = list(self.matrix.get('records', [])) + \
                list(self.compiled.get('records', []))
            merged['errors'] = list(self.matrix.get('errors', [])) + \
                list(self.compiled.get('errors', []))
        return merged

    def results_dict(self, final: bool) -> dict:
        return dict(
            mode='smoke' if self.smoke else 'gpu', complete=final, budget_s=self.budget,
            elapsed_s=round(self.elapsed(), 1), written=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
            host=platform.node(), environment=self.environment,
            steps=[asdict(r) for r in self.results],
            targets=[v.to_dict() for v in self.verdicts()], matrix=self.merged_matrix())

    def write_outputs(self, final: bool = False) -> None:
        """results.json, summary.md and logs.tar.gz, each replaced atomically. A failure to
        render one of them is written into it (and printed) instead of ending the run."""
        try:
            results = self.results_dict(final)
        except Exception:  # noqa: BLE001
            results = dict(complete=final, error=traceback.format_exc(),
                           steps=[asdict(r) for r in self.results])
        write_text_atomically(self.out_dir / RESULTS,
                              json.dumps(results, indent=1, default=str) + '\n')
        try:
            summary = summary_markdown(self, results)
        except Exception:  # noqa: BLE001
            summary = ('# repseg gpu_check: the summary could not be rendered\n\n```\n'
                       f'{traceback.format_exc()}```\n\nSee results.json.\n')
            self.echo(summary)
        write_text_atomically(self.out_dir / SUMMARY, summary)
        try:
            write_atomically(self.out_dir / LOGS_ARCHIVE, self._archive_logs)
        except OSError as error:
            self.echo(f'could not archive the logs: {error}')

    def _archive_logs(self, target: str) -> None:
        with tarfile.open(target, 'w:gz') as archive:
            archive.add(self.logs, arcname='logs')
