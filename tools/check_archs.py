#!/usr/bin/env python
"""Build every RepVGG arch, fuse it, and print parameters and the fused-vs-train difference.

    tools/check_archs.py [ARCH ...] [--size 64]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repseg.models.summary import TABLE_HEADER, check_archs, format_row  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('archs', nargs='*', help='archs to check (default: all 14)')
    parser.add_argument('--size', type=int, default=64, help='input side (default 64)')
    args = parser.parse_args(argv)
    print(TABLE_HEADER)
    worst = 0.0
    try:
        for check in check_archs(args.archs or None, args.size):
            print(format_row(check), flush=True)
            worst = max(worst, check.max_abs_diff / max(check.max_abs_output, 1e-12))
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'worst relative difference: {worst:.2e} (float32; exact fusion gives ~1e-6)')
    return 0 if worst < 1e-4 else 1


if __name__ == '__main__':
    sys.exit(main())
