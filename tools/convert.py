#!/usr/bin/env python
"""Convert a RepVGG checkpoint (official, timm, mmpretrain or repseg layout; train-time
or fused) to another layout, optionally fusing it for deployment.

Example: tools/convert.py RepVGG-B2-train.pth B2-deploy.pth --arch B2 --deploy
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repseg.checkpoint import LAYOUTS, CheckpointError  # noqa: E402
from repseg.checkpoint.convert import convert_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint to read')
    parser.add_argument('dst', help='checkpoint to write (replaced atomically)')
    parser.add_argument('--arch', required=True, help="RepVGG arch, e.g. 'B2' or 'RepVGG-B2'")
    parser.add_argument('--to', default='official', choices=list(LAYOUTS),
                        help='layout of the output (default: official)')
    parser.add_argument('--deploy', action='store_true',
                        help='fuse every block into a single 3x3 conv')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        summary = convert_checkpoint(args.src, args.dst, args.arch, to=args.to,
                                     deploy=args.deploy)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
    kind = {False: 'train-time', True: 'fused'}
    classes = summary['num_classes']
    head = f'{classes}-class classifier' if classes else 'no classifier'
    print(f"read  {args.src}: RepVGG-{summary['arch']}, {summary['layout_in']} layout, "
          f"{kind[summary['fused_in']]} weights, {head}")
    print(f"wrote {summary['dst']}: {summary['layout_out']} layout, "
          f"{kind[summary['fused_out']]} weights, {summary['tensors']} tensors")


if __name__ == '__main__':
    main()
