#!/usr/bin/env python
"""Convert a RepVGG checkpoint (official, timm, mmpretrain or repseg layout; train-time
or fused; or the backbone of a segmentor checkpoint of tools/train.py or deploy.py) to
another layout, optionally fusing it for deployment.

Example: tools/convert.py RepVGG-B2-train.pth B2-deploy.pth --arch B2 --deploy
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUT_NAMES = ('repseg', 'official', 'timm', 'mmpretrain')  # repseg.checkpoint.LAYOUTS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint to read')
    parser.add_argument('dst', help='checkpoint to write (atomically; never SRC itself): '
                        '.safetensors is written with the safetensors library, any other '
                        'name (.pth) with torch.save')
    parser.add_argument('--arch', required=True, help="RepVGG arch, e.g. 'B2' or 'RepVGG-B2'")
    parser.add_argument('--to', default='official', choices=LAYOUT_NAMES,
                        help='layout of the output (default: official)')
    parser.add_argument('--deploy', action='store_true',
                        help='fuse every block into a single 3x3 conv')
    parser.add_argument('--force', action='store_true', help='replace an existing DST')
    return parser.parse_args(argv)


def run(args):
    from repseg.checkpoint.convert import convert_checkpoint

    summary = convert_checkpoint(args.src, args.dst, args.arch, to=args.to,
                                 deploy=args.deploy, force=args.force)
    kind = {False: 'train-time', True: 'fused'}
    classes = summary['num_classes']
    head = f'{classes}-class classifier' if classes else 'no classifier'
    if summary['segmentor_heads']:
        head += (f" (the backbone of a segmentor checkpoint; {summary['segmentor_heads']} "
                 'head tensors left out)')
    print(f"read  {args.src}: RepVGG-{summary['arch']}, {summary['layout_in']} layout, "
          f"{kind[summary['fused_in']]} weights, {head}")
    print(f"wrote {summary['dst']}: {summary['layout_out']} layout, "
          f"{kind[summary['fused_out']]} weights, {summary['tensors']} tensors")


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
