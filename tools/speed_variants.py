#!/usr/bin/env python
"""Renamed: tools/benchmark.py CONFIG --variants [NAME ...] (this alias translates the old
options, says the new spelling and runs it)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402  (tools/benchmark.py)

VARIANT_NAMES = benchmark.VARIANT_NAMES


def translate(argv=None) -> list:
    """The tools/benchmark.py arguments for the old ones (their old defaults kept)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?')
    parser.add_argument('--shape', type=int, nargs=2, default=(1024, 2048))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--dtype', choices=('fp16-cl', 'fp32'), default='fp16-cl')
    parser.add_argument('--device', choices=('cuda', 'cpu'))
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--variants', nargs='+', default=[])
    parser.add_argument('--threads', type=int)
    parser.add_argument('--json')
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args(argv)
    new = [args.config, *([args.checkpoint] if args.checkpoint else []), '--variants',
           *args.variants, '--shape', *map(str, args.shape), '--batch', str(args.batch),
           '--warmup', str(args.warmup), '--iters', str(args.iters), '--rounds',
           str(args.rounds), *(['--fp16', '--channels-last'] if args.dtype == 'fp16-cl' else [])]
    for flag in ('device', 'threads', 'json'):
        if getattr(args, flag) is not None:
            new += [f'--{flag}', str(getattr(args, flag))]
    return new + [flag for flag in ('--compile', '--force') if getattr(args, flag[2:])]


def main(argv=None):
    new = translate(argv)
    print('tools/speed_variants.py is now: tools/benchmark.py ' + ' '.join(
        repr(a) if ' ' in a else a for a in new), flush=True)
    benchmark.main(new)


if __name__ == '__main__':
    main()
