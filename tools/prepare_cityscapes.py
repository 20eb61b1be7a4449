#!/usr/bin/env python
"""Check a Cityscapes download and build its labelTrainIds and split lists.

Re-running rebuilds these derived files (*_gtFine_labelTrainIds.png, train.txt, val.txt)
from the official labels; nothing of the download itself is written.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='folder holding leftImg8bit/ and gtFine/')
    parser.add_argument('--nproc', type=int, default=1,
                        help='worker processes for the label conversion')
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f'--nproc must be at least 1, got {args.nproc}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error
    from repseg.data.prepare import prepare_cityscapes

    with exit_on_user_error():
        prepare_cityscapes(args.root, args.nproc)


if __name__ == '__main__':
    main()
