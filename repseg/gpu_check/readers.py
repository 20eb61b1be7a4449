"""Turn each step's outputs (log, JSON, checkpoint) into its result: a one-line note,
details for results.json, and a failure when the step ran but did not do its job (a
non-finite loss, SyncBN not kept, no AMP state, a matrix with errors, ...).

Every reader takes the run's :class:`~.steps.GpuCheck` (``check``) and the step's
:class:`~.layout.StepResult`; this module does not import :mod:`.steps`, which imports it.
"""
from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ElementTree
from .layout import PROFILE, StepResult


def _read_json_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    raise ValueError('no JSON line in the output')


def read_environment(check, result: StepResult) -> None:
    check.environment = _read_json_line((check.logs / result.log).read_text())
    env = check.environment
    missing = [name for name, ok in env.get('imports', {}).items() if ok is not True]
    result.details = dict(missing=missing)
    result.note = (f"{env.get('device_name', '?')}, torch {env.get('torch')}, CUDA "
                   f"{env.get('cuda')}, Python {env.get('python')}"
                   + (f"; cannot import: {', '.join(missing)}" if missing else '')
                   + (f"; C compiler: {env['c_compiler']}"
                      if str(env.get('c_compiler', '')).startswith('none') else ''))
    if missing and result.status == 'ok':
        result.status = 'failed'


def read_partial_matrix(check) -> None:
    path = check.logs / 'matrix.json'
    if path.is_file():
        try:
            check.matrix = json.loads(path.read_text())
        except (OSError, ValueError):
            pass


def read_matrix(check, result: StepResult) -> None:
    read_partial_matrix(check)
    if not check.matrix:
        result.note = 'no matrix JSON written'
        return
    errors = check.matrix.get('errors') or []
    verdicts = check.verdicts()
    met = sum(v.met is True for v in verdicts)
    result.details = dict(records=len(check.matrix.get('records', [])), errors=len(errors),
                          seconds=check.matrix.get('seconds'), finished=check.matrix.get('finished'))
    result.note = (f"{result.details['records']} records, {len(errors)} errors; targets met: "
                   f'{met} of {len(verdicts)}')
    if errors and result.status == 'ok':
        result.status = 'failed'


def read_profile(check, result: StepResult) -> None:
    text = (check.logs / result.log).read_text(errors='replace')
    tables = len(re.findall(r'^profiled ', text, flags=re.M))
    result.details = dict(tables=tables)
    result.note = f'{tables} tables in {PROFILE}' if tables else 'nothing to profile'


def read_pytest(check, result: StepResult) -> None:
    """Counts and failed tests from pytest's XML report, else from its verbose log (a
    killed run writes no report)."""
    report = check.logs / 'pytest_cuda.xml'
    if report.is_file():
        suites = ElementTree.parse(report).getroot()
        suites = [suites] if suites.tag == 'testsuite' else list(suites)
        counts = {key: sum(int(s.get(key, 0)) for s in suites)
                  for key in ('tests', 'failures', 'errors', 'skipped')}
        failed = [case.get('name') for suite in suites for case in suite.iter('testcase')
                  if case.find('failure') is not None or case.find('error') is not None]
    else:
        outcomes = re.findall(r'::(\S+) (PASSED|FAILED|SKIPPED|ERROR)',
                              (check.logs / result.log).read_text(errors='replace'))
        counts = dict(tests=len(outcomes), failures=sum(o == 'FAILED' for _, o in outcomes),
                      errors=sum(o == 'ERROR' for _, o in outcomes),
                      skipped=sum(o == 'SKIPPED' for _, o in outcomes))
        failed = [name for name, o in outcomes if o in ('FAILED', 'ERROR')]
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    result.details = dict(counts, failed=failed, report=report.is_file())
    result.note = (f"{counts['passed']} passed, {counts['failures']} failed, "
                   f"{counts['errors']} errors, {counts['skipped']} skipped"
                   + (f" ({', '.join(failed[:5])})" if failed else '')
                   + ('' if report.is_file() else ' (read from the log: no XML report)'))


def read_toy_city(check, result: StepResult) -> None:
    images = list(check.path('toy_city', 'leftImg8bit').rglob('*_leftImg8bit.png'))
    result.note = f'{len(images)} frames'


_LOSS = re.compile(r'Iter\(train\)\s*\[\s*(\d+)/\s*\d+\].*?\bloss: ([-+0-9.eE]+|nan|inf)')


def _read_training(check, result: StepResult, iters: int) -> list:
    text = (check.logs / result.log).read_text(errors='replace')
    losses = [(int(i), float(loss)) for i, loss in _LOSS.findall(text)]
    norms = re.findall(r'normalization layers: (.+)', text)
    checkpoint = check.path('train', f'iter_{iters}.pth')
    finite = bool(losses) and all(loss == loss and abs(loss) != float('inf')
                                  for _, loss in losses)
    details = dict(losses=losses, norm_layers=norms[-1] if norms else None,
                   checkpoint=checkpoint.is_file(), finite_loss=finite)
    if checkpoint.is_file():
        import torch

        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
        details['loss_scaler_saved'] = 'loss_scaler' in (state.get('optimizer') or {})
        details['checkpoint_iter'] = state.get('meta', {}).get('iter')
    result.details.update(details)
    amp = '' if check.smoke else (f", AMP loss scaler saved: {details.get('loss_scaler_saved')}")
    result.note = (f"losses {', '.join(f'{i}:{v:.3f}' for i, v in losses[-3:]) or 'none'}; "
                   f"norm layers: {details['norm_layers']}{amp}")
    problems = []
    if not finite:
        problems.append('no finite loss logged')
    if not checkpoint.is_file():
        problems.append(f'no iter_{iters}.pth')
    sync_bn_expected = not check.smoke
    if sync_bn_expected and 'SyncBatchNorm' not in (details['norm_layers'] or ''):
        problems.append('SyncBN was not kept')
    if not check.smoke and not details.get('loss_scaler_saved'):
        problems.append('no AMP loss scaler in the checkpoint')
    if problems and result.status == 'ok':
        result.status = 'failed'
        result.note += '; ' + '; '.join(problems)
    return losses


def read_train(check, result: StepResult) -> None:
    _read_training(check, result, check.sizes.first_iters)


def read_resume(check, result: StepResult) -> None:
    losses = _read_training(check, result, check.sizes.total_iters)
    text = (check.logs / result.log).read_text(errors='replace')
    resumed = 'resumed' in text.lower() and (not losses or losses[0][0] > check.sizes.first_iters)
    result.details['resumed'] = resumed
    if not resumed and result.status == 'ok':
        result.status = 'failed'
        result.note += f'; did not resume from iteration {check.sizes.first_iters}'


def read_test(check, result: StepResult) -> None:
    folder = 'test_fp16' if result.name == 'test-fp16' else 'test'
    metrics = json.loads(check.path(folder, 'metrics.json').read_text())
    shutil.copy(check.path(folder, 'metrics.json'), check.logs / f'metrics_{folder}.json')
    result.details = {k: metrics.get(k) for k in ('mIoU', 'mAcc', 'aAcc', 'fp16')}
    result.note = f"mIoU {metrics.get('mIoU')}, mAcc {metrics.get('mAcc')}, aAcc {metrics.get('aAcc')}"
    fp32 = next((r.details for r in check.results if r.name == 'test' and r.status == 'ok'), None)
    if result.name == 'test-fp16' and fp32:
        result.note += f" (fp32: mIoU {fp32.get('mIoU')}, aAcc {fp32.get('aAcc')})"


def read_deploy(check, result: StepResult) -> None:
    config, checkpoint = check.deploy_files()
    result.note = f'wrote {checkpoint.name} and {config.name}' if checkpoint.is_file() \
        else 'no fused checkpoint written'


def read_infer(check, result: StepResult) -> None:
    text = (check.logs / result.log).read_text(errors='replace')
    done = re.findall(r'done: .*', text)
    result.note = done[-1] if done else 'no summary line'


def read_export(check, result: StepResult) -> None:
    text = (check.logs / result.log).read_text(errors='replace')
    diffs = re.findall(r'max \|onnxruntime - torch\| on logits = ([0-9.eE+-]+)', text)
    result.details = dict(max_abs_diff=[float(d) for d in diffs])
    result.note = f"max |onnxruntime - torch| on logits: {', '.join(diffs) or 'not printed'}"


def read_compile(check, result: StepResult) -> None:
    path = check.logs / 'compile.json'
    if path.is_file():
        check.compiled = json.loads(path.read_text())
        records = check.compiled.get('records', [])
        result.note = '; '.join(f"{r['name']}: {r['fps']:.2f} img/s" for r in records) \
            or 'no records'
        if check.compiled.get('errors') and result.status == 'ok':
            result.status = 'failed'


