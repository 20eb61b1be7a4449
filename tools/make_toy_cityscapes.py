#!/usr/bin/env python
"""Draw the synthetic toy city in the Cityscapes layout (data/README.md)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repseg.data.toy_city import make_toy_cityscapes  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('out_dir',
                        help='data root to write, e.g. data/toy_city')
    parser.add_argument('--train', type=int, default=48, help='train frames')
    parser.add_argument('--val', type=int, default=12, help='val frames')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 256),
                        metavar=('H', 'W'), help='frame height and width')
    parser.add_argument('--seed', type=int, default=0,
                        help='same seed, identical files')
    args = parser.parse_args()
    make_toy_cityscapes(args.out_dir, args.train, args.val, tuple(args.size),
                        args.seed)


if __name__ == '__main__':
    main()
