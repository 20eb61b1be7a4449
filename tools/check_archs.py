#!/usr/bin/env python
"""Build every RepVGG arch, fuse it, and print parameters and the fused-vs-train difference.

    tools/check_archs.py [ARCH ...] [--size 64]

Exit status 1 if some arch's fused output differs from its train-time output by 1e-4
(relative) or more.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('archs', nargs='*', help='archs to check (default: all 14)')
    parser.add_argument('--size', type=int, default=64, help='input side (default 64)')
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error(f'--size must be at least 1, got {args.size}')
    return args


def run(args) -> int:
    from repseg.models.arch import canonical_arch_name
    from repseg.models.summary import TABLE_HEADER, check_archs, format_row

    archs = [canonical_arch_name(arch) for arch in args.archs]  # all names, before work
    print(TABLE_HEADER)
    worst = 0.0
    for check in check_archs(archs or None, args.size):
        print(format_row(check), flush=True)
        worst = max(worst, check.max_abs_diff / max(check.max_abs_output, 1e-12))
    print(f'worst relative difference: {worst:.2e} (float32; exact fusion gives ~1e-6)')
    return 0 if worst < 1e-4 else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error

    with exit_on_user_error():
        return run(args)


if __name__ == '__main__':
    sys.exit(main())
