"""``summary.md`` of a gpu_check run: status, steps, targets met or not, every table.

``check`` is the run's :class:`~.steps.GpuCheck` (not imported: :mod:`.steps` imports
this module).
"""
from __future__ import annotations

from ..speed.goals import Verdict
from ..speed.report import goals_table, markdown_table, matrix_markdown
from .layout import LOGS_ARCHIVE, PROFILE, RESULTS, SMOKE_NOTE, SUMMARY


def _environment_line(env: dict) -> str:
    if not env:
        return 'Environment: not probed yet.'
    parts = [f"{env.get('device_name', '?')}", f"torch {env.get('torch')}",
             f"CUDA {env.get('cuda')}", f"cuDNN {env.get('cudnn')}",
             f"Python {env.get('python')}", f"numpy {env.get('numpy')}",
             f"mmengine {env.get('mmengine_version')}", f"mmcv {env.get('mmcv_version')}",
             f"mmseg {env.get('mmseg_version')}", f"{env.get('cpu_count')} CPUs"]
    line = 'Environment: ' + ', '.join(parts)
    if env.get('nvidia_smi'):
        line += f"; nvidia-smi: `{env['nvidia_smi']}`"
    return line


def _status_line(check, results: dict) -> str:
    steps = check.results
    done = [r for r in steps if r.status not in ('pending', 'running')]
    ok = sum(r.status == 'ok' for r in steps)
    state = 'complete' if results['complete'] else (
        f'INCOMPLETE (written after {len(done)} of {len(steps)} steps; if this is the final '
        'file, the run was stopped from outside)')
    return (f"Run {state}: {ok} of {len(steps)} steps ok, {results['elapsed_s']:.0f} s of a "
            f"{check.budget:.0f} s budget; written {results['written']} on {results['host']}.")


def _steps_table(check) -> str:
    rows = [(index, f'`{r.name}`', r.title, r.status if r.status == 'ok' else f'**{r.status}**',
             f'{r.seconds:.1f}', f'{r.cpu_seconds:.1f}', r.note.replace('|', '\\|'),
             r.log or '-') for index, r in enumerate(check.results, 1)]
    return markdown_table(('#', 'step', 'what', 'status', 'seconds', 'CPU seconds', 'result',
                           'log'), rows)


def summary_markdown(check, results: dict) -> str:
    mode = 'CPU smoke' if check.smoke else 'GPU'
    device = (check.environment or {}).get('device_name', check.device)
    parts = [f'# repseg gpu_check: {device} ({mode})', _status_line(check, results),
             _environment_line(check.environment)]
    if check.smoke:
        parts.append(f'**{SMOKE_NOTE}**')
    parts += ['## Steps', _steps_table(check)]
    verdicts = [Verdict(**v) for v in results.get('targets') or []]
    matrix = results.get('matrix')
    parts.append('## Targets (issue 9, deliverable 4)')
    if verdicts:
        parts.append(goals_table(verdicts))
        parts.append('Verdicts use mmseg\'s predict path (forward, resize, arg-max, '
                     'SegDataSample); "best call path" is the fastest option of the '
                     '`options` group for the fp16 B2 (the same path for R-101-D8 when both '
                     f'are fp16). Per-op profiles of the missed targets: `{PROFILE}`.')
    else:
        parts.append('No matrix results (see the `matrix` step).')
    if matrix:
        matrix_state = 'complete' if matrix.get('finished') else 'PARTIAL (stopped early)'
        parts += [f"## Benchmark matrix ({matrix_state}, {matrix.get('seconds')} s)",
                  matrix_markdown(matrix)]
    parts += ['## Files',
              f'- `{SUMMARY}`: this file; `{RESULTS}`: every step, record and verdict\n'
              f'- `{PROFILE}`: torch.profiler per-op tables of the missed targets\' models\n'
              f'- `{LOGS_ARCHIVE}`: `logs/NN_step.log` per step, `matrix.json`, '
              '`pytest_cuda.xml`, `metrics_*.json`']
    return '\n\n'.join(parts) + '\n'
