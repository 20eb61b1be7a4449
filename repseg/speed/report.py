"""Every Markdown table of the speed code: benchmark records, the call-path comparison,
the matrix and its goals (``tools/benchmark.py`` output and the gpu_check summary).

The benchmark tables take :class:`~.record.SpeedRecord` s; the matrix tables take the
records' JSON objects (a ``matrix.json`` read back, possibly partial).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

from .goals import Verdict, find_record
from .matrix import PREDICT, Key


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table, each column padded to its widest cell."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))]

    def line(cells):
        return '| ' + ' | '.join(c.ljust(w) for c, w in zip(cells, widths)) + ' |'

    rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([line(header), rule, *map(line, rows)])


RECORD_COLUMNS = (
    ('model', lambda r: r.name),
    ('dtype', lambda r: r.dtype + (' CL' if r.channels_last else '')),
    ('batch', lambda r: str(r.batch)),
    ('shape', lambda r: f'{r.shape[0]}x{r.shape[1]}'),
    ('img/s', lambda r: f'{r.fps:.2f}'),
    ('median ms', lambda r: f'{r.latency_ms_median:.1f}'),
    ('p90 ms', lambda r: f'{r.latency_ms_p90:.1f}'),
    ('peak MB', lambda r: _number(r.peak_mem_mb, 0)),
    ('GFLOPs', lambda r: _number(r.gflops, 1)),
    ('TFLOP/s', lambda r: _number(r.tflops, 3)),
    ('vs first', lambda r: _number(r.fps_ratio, suffix='x')),
    ('vs train-time', lambda r: _number(r.speedup_vs_train_time, suffix='x')),
)


def records_table(records: Sequence) -> str:
    """The benchmark's table: one row per record."""
    return markdown_table([title for title, _ in RECORD_COLUMNS],
                          [[cell(record) for _, cell in RECORD_COLUMNS] for record in records])


def describe_environment(records: Sequence) -> str:
    if not records:
        return ''
    env = records[0].environment
    parts = [f"torch {env['torch_version']}", env['device_name'],
             f"{env['cpu_threads']} CPU threads"]
    if env.get('cuda_version'):
        parts.append(f"CUDA {env['cuda_version']}, cuDNN {env['cudnn_version']}")
    return ', '.join(parts)


def agreement_lines(records: Sequence, reference: str) -> list[str]:
    """One line per record that has a label agreement with ``reference`` (a name)."""
    return [f'{r.name}: {100 * r.label_agreement:.2f}% of pixels labelled as by {reference}'
            for r in records if r.label_agreement is not None and r.name != reference]


def variants_markdown(result) -> str:
    """The call paths of a :class:`~.variants.VariantsResult` as a table, then one line
    per option that did not take effect."""
    rows = [(r.variant, f'{r.fps:.2f}', f'{r.latency_ms_median:.2f}',
             f'{r.latency_ms_p90:.2f}', _number(r.peak_mem_mb, 0),
             _number(r.fps_ratio, suffix='x'), f'{100 * r.label_agreement:.3f}%',
             f'{r.build_s:.1f}') for r in result.records]
    table = markdown_table(('variant', 'img/s', 'median ms', 'p90 ms', 'peak MB', 'vs first',
                            'agreement vs fp32', 'build s'), rows)
    dtype = result.dtype + (' channels-last' if result.channels_last else '')
    shape = 'x'.join(str(s) for s in result.shape)
    lines = [f'{result.config}, batch {result.batch} at {shape}, {dtype}, {result.device}; '
             f'reference (fused fp32, TF32 off) predicts {result.reference_classes} classes '
             f'(top class {100 * result.reference_top_class_share:.1f}% of pixels)\n', table]
    notes = [f'- {r.variant}: {option}: {outcome["detail"]}'
             for r in result.records for option, outcome in r.outcomes.items()
             if not outcome['applied']]
    if notes:
        lines += ['', 'Options that did not take effect:', *notes]
    return '\n'.join(lines)


def _number(value: Optional[float], digits: int = 2, suffix: str = '') -> str:
    return '-' if value is None else f'{value:.{digits}f}{suffix}'


def _ratio(records, record: dict, key: Key) -> str:
    other = find_record(records, key)
    return _number(record['fps'] / other['fps'], suffix='x') if other else '-'


def _model(record: dict) -> str:
    state = {True: ', fused', False: ', train-time'}.get(record.get('fused'), '')
    return record['label'] + state


def inference_table(records: Sequence[dict], group: str) -> str:
    """fp32 or fp16cl group: speed, memory, FLOPs, ratios to R-101-D8 fp32 and to the
    train-time twin."""
    rows = []
    for record in (r for r in records if r['group'] == group and r['variant'] == PREDICT):
        twin = '-'
        if record.get('fused'):
            twin = _ratio(records, record, Key(group, record['role'], PREDICT, False))
        rows.append((_model(record), _number(record['fps']),
                     _number(record['latency_ms_median'], 1), _number(record['latency_ms_p90'], 1),
                     _number(record['peak_mem_mb'], 0), _number(record.get('gflops'), 1),
                     _number(record.get('tflops'), 1),
                     _ratio(records, record, Key('fp32', 'r101')), twin))
    return markdown_table(('model', 'img/s', 'median ms', 'p90 ms', 'peak MB', 'GFLOPs',
                           'TFLOP/s', 'vs R-101-D8 fp32', 'fused / train-time'), rows)


def paper_table(records: Sequence[dict]) -> str:
    rows = [(_model(r), _number(r['fps']), _number(r['latency_ms_median'], 1),
             _number(r['peak_mem_mb'], 0), _ratio(records, r, Key('paper', 'r50')),
             _ratio(records, r, Key('paper', 'r101')))
            for r in records if r['group'] == 'paper']
    return markdown_table(('model', 'img/s', 'median ms per batch', 'peak MB', 'vs R-50-D8',
                           'vs R-101-D8'), rows)


def options_table(records: Sequence[dict]) -> str:
    """fp16 channels-last call paths: each against the same model's predict path, and
    B2 against R-101-D8 through the same path."""
    rows = []
    for record in records:
        if record['group'] not in ('fp16cl', 'options') or record['role'] not in ('b2', 'r101'):
            continue
        if record['group'] == 'fp16cl' and record.get('fused') is False:
            continue
        versus_predict = _ratio(records, record, Key('fp16cl', record['role'], PREDICT,
                                                     record.get('fused')))
        b2_over_r101 = '-'
        if record['role'] == 'b2':
            group = record['group']
            b2_over_r101 = _ratio(records, record, Key(group, 'r101', record['variant']))
        rows.append((_model(record), record['variant'], _number(record['fps']),
                     _number(record['latency_ms_median'], 2), _number(record['peak_mem_mb'], 0),
                     versus_predict, b2_over_r101))
    return markdown_table(('model', 'call path', 'img/s', 'median ms', 'peak MB',
                           'vs predict', 'B2 / R-101-D8, same path'), rows)


def backbone_lines(records: Sequence[dict], matmul: Optional[dict]) -> str:
    lines = []
    if matmul:
        lines.append(f"- dense float16 matmul {matmul['n']}^3: {matmul['tflops']:.1f} TFLOP/s "
                     f"(median {matmul['median_ms']:.3f} ms of {matmul['iters']} calls)")
    for record in (r for r in records if r['group'] == 'backbone'):
        share = ''
        if matmul and record.get('tflops'):
            share = f", {100 * record['tflops'] / matmul['tflops']:.1f}% of the matmul peak"
        lines.append(f"- {record['name']} ({record['shape'][0]}x{record['shape'][1]}, "
                     f"{record['dtype']} channels-last): {record['fps']:.2f} img/s, "
                     f"{_number(record.get('gflops'), 1)} GFLOPs (multiply-adds), "
                     f"{_number(record.get('tflops'), 1)} TFLOP/s{share}")
    return '\n'.join(lines) or '- not measured'


def training_table(records: Sequence[dict]) -> str:
    rows = [(r['label'], r['variant'] + (' (AMP)' if r.get('amp') else ' (fp32)'),
             f"{r['batch']} x {r['shape'][0]}x{r['shape'][1]}", _number(r['fps']),
             _number(r['latency_ms_median'], 1), _number(r['peak_mem_mb'], 0))
            for r in records if r['group'] == 'training']
    return markdown_table(('model', 'iteration', 'batch', 'img/s', 'ms per iteration',
                           'peak MB'), rows)


def verdict_word(met: Optional[bool]) -> str:
    return {True: 'met', False: '**NOT met**', None: 'not measured'}[met]


def goals_table(verdicts: Sequence[Verdict]) -> str:
    rows = []
    for v in verdicts:
        measured = '-' if v.value is None else (
            f'{100 * v.value:.1f}%' if v.name.endswith('peak') else f'{v.value:.2f}x')
        threshold = f'{100 * v.threshold:.0f}%' if v.name.endswith('peak') \
            else f'{v.threshold:.1f}x'
        option = '-'
        if v.option_value is not None:
            option = f'{v.option_value:.2f}x with "{v.option_variant}" ' \
                     f'({verdict_word(v.option_met)})'
        rows.append((v.text, measured, threshold, verdict_word(v.met), option, v.detail))
    return markdown_table(('target', 'measured', 'needed', 'verdict', 'best call path',
                           'numbers'), rows)


def matrix_markdown(matrix: dict, verdicts: Sequence[Verdict] = ()) -> str:
    """Every table of a matrix result, with the targets first if ``verdicts`` are given."""
    records = matrix.get('records') or []
    plan = matrix.get('plan') or {}
    shape = 'x'.join(map(str, plan.get('shape', ())))
    sections = ['### Targets\n\n' + goals_table(verdicts)] if verdicts else []
    sections += [
        f'### fp32 (TF32 on), batch 1, {shape}\n\n' + inference_table(records, 'fp32'),
        f'### fp16 channels-last, batch 1, {shape}\n\n' + inference_table(records, 'fp16cl'),
        '### Paper protocol (batch {}, {}, fp32, TF32 off)\n\n'.format(
            plan.get('paper_batch'), 'x'.join(map(str, plan.get('paper_shape', ()))))
        + paper_table(records),
        '### Call paths, fp16 channels-last\n\n' + options_table(records),
        '### Backbone and dense matmul peak\n\n' + backbone_lines(records, matrix.get('matmul')),
        '### Training iteration\n\n' + training_table(records),
    ]
    errors = matrix.get('errors') or []
    if errors:
        sections.append('### Errors\n\n' + '\n'.join(
            f"- {', '.join(f'{k}={v}' for k, v in e.items() if k != 'error')}: "
            f"`{e['error'][:300]}`" for e in errors))
    return '\n\n'.join(sections) + '\n'
