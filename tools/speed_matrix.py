#!/usr/bin/env python
"""Renamed: tools/benchmark.py --matrix [--smoke] [--compile] [--profile ...] (this alias
says the new spelling and runs it with the same options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402  (tools/benchmark.py)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not {'-h', '--help'} & set(argv):  # the help is the new tool's usage
        print('tools/speed_matrix.py is now: tools/benchmark.py --matrix ' + ' '.join(argv),
              flush=True)
    benchmark.main(['--matrix', *argv])


if __name__ == '__main__':
    main()
