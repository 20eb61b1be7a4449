#!/usr/bin/env python
"""Check a Cityscapes download and build its labelTrainIds and split lists."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repseg.data.prepare import prepare_cityscapes  # noqa: E402
from repseg.data.validate import DatasetError  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('root', help='folder holding leftImg8bit/ and gtFine/')
    parser.add_argument('--nproc', type=int, default=1,
                        help='worker processes for the label conversion')
    args = parser.parse_args()
    try:
        prepare_cityscapes(args.root, args.nproc)
    except DatasetError as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
