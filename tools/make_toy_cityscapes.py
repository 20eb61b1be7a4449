#!/usr/bin/env python
"""Draw the synthetic toy city in the Cityscapes layout (data/README.md).

Files of an earlier toy city in OUT_DIR are replaced only with --force.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('out_dir',
                        help='data root to write, e.g. data/toy_city')
    parser.add_argument('--train', type=int, default=48, help='train frames')
    parser.add_argument('--val', type=int, default=12, help='val frames')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 256),
                        metavar=('H', 'W'), help='frame height and width')
    parser.add_argument('--seed', type=int, default=0,
                        help='same seed, identical files')
    parser.add_argument('--force', action='store_true',
                        help='replace the files of an earlier toy city in OUT_DIR')
    args = parser.parse_args(argv)
    if args.train < 0 or args.val < 0:
        parser.error(f'--train and --val must be >= 0, got {args.train} and {args.val}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error
    from repseg.data.toy_city import make_toy_cityscapes

    with exit_on_user_error():
        make_toy_cityscapes(args.out_dir, args.train, args.val, tuple(args.size),
                            args.seed, force=args.force)


if __name__ == '__main__':
    main()
