"""Per-op tables (``torch.profiler``) of matrix records, to see where a missed target's
time goes: which kernels dominate, whether layout copies or pooling show up."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from .matrix import Key, MatrixPlan, build_target
from .models import PreparedModels, build_segmentor_to_time
from .timing import synchronize

#: Rows per table (ops sorted by their own time on the device, CPU time off CUDA).
ROW_LIMIT = 25


def _table(averages, cuda: bool, row_limit: int) -> str:
    """Sorted by own device time; torch < 2.4 names it ``self_cuda_time_total``."""
    sort_keys = ('self_device_time_total', 'self_cuda_time_total') if cuda \
        else ('self_cpu_time_total',)
    for sort_key in sort_keys[:-1]:
        try:
            return averages.table(sort_by=sort_key, row_limit=row_limit)
        except (AttributeError, KeyError):
            continue
    return averages.table(sort_by=sort_keys[-1], row_limit=row_limit)


def op_table(run: Callable[[], object], device: str, warmup: int = 2, iters: int = 3,
             row_limit: int = ROW_LIMIT) -> str:
    """The per-op table of ``iters`` calls of ``run`` after ``warmup`` untimed ones."""
    cuda = torch.device(device).type == 'cuda'
    for _ in range(warmup):
        run()
    synchronize(device)
    if cuda:
        recorder = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    else:  # the same per-op table without kineto, whose start-up costs seconds on a CPU
        recorder = torch.autograd.profiler.profile(use_kineto=False)
    with recorder as prof:
        for _ in range(iters):
            run()
        synchronize(device)
    return _table(prof.key_averages(), cuda, row_limit)


def profile_keys(plan: MatrixPlan, keys: Iterable[Key],
                 write: Callable[[str], None], log: Callable[[str], None] = print,
                 header: Optional[str] = None) -> int:
    """Profile each key's call (built as in the matrix) and ``write`` the text so far
    after each table (so a run cut short keeps its tables). Returns the tables written."""
    keys = list(keys)
    roles = list(dict.fromkeys(key.role for key in keys))
    keys.sort(key=lambda key: roles.index(key.role))  # each model built once
    text = [header or '']
    models = {}
    done = 0
    for key in keys:
        spec = plan.spec(key.role)
        try:
            if spec.role not in models:
                models.clear()  # one base model alive at a time
                models[spec.role] = PreparedModels(build_segmentor_to_time(
                    spec.config, None, plan.device, dict(spec.cfg_options),
                    plan.calibration_shape))
            target = build_target(key, models[spec.role], spec, plan)
            settings = plan.settings(key.group)
            settings.configure()
            table = op_table(target.run, plan.device)
            title = (f'{target.name} [{key.group}]: batch {settings.batch}, '
                     f'{settings.shape[0]}x{settings.shape[1]}, {settings.dtype_name}'
                     f"{' channels-last' if settings.channels_last else ''}")
            text.append(f"{'=' * 100}\n{title}\n{'=' * 100}\n{table}\n")
            done += 1
            log(f'profiled {title}')
        except Exception as error:  # noqa: BLE001  (recorded; the next key still runs)
            text.append(f'profiling {key} failed: {type(error).__name__}: {error}\n')
            log(text[-1])
        finally:
            if plan.cuda:
                torch.cuda.empty_cache()
        write('\n'.join(text))
    return done
