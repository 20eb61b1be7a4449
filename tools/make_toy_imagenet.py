#!/usr/bin/env python
"""Draw the synthetic toy ImageNet: 10 classes of shapes and textures, as class folders
(train/, val/) and mmpretrain's annotation lists (meta/train.txt, meta/val.txt).

Files of an earlier toy set in OUT_DIR are replaced only with --force.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir', help='data root to write, e.g. data/toy_imagenet')
    parser.add_argument('--train', type=int, default=60, help='train images per class')
    parser.add_argument('--val', type=int, default=20, help='val images per class')
    parser.add_argument('--size', type=int, default=80, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='same seed, identical files')
    parser.add_argument('--force', action='store_true',
                        help='replace the files of an earlier toy set in OUT_DIR')
    args = parser.parse_args(argv)
    if args.train < 1 or args.val < 1:
        parser.error(f'--train and --val must be >= 1, got {args.train} and {args.val}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error
    from repseg.data.toy_imagenet import make_toy_imagenet

    with exit_on_user_error():
        make_toy_imagenet(args.out_dir, args.train, args.val, args.size, args.seed,
                          force=args.force)


if __name__ == '__main__':
    main()
