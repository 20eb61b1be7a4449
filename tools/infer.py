#!/usr/bin/env python
"""Segment images, folders (recursively) and videos with a trained segmentor.

Writes, per image, <stem>_mask.png (Cityscapes colours), <stem>_overlay.png and
<stem>_trainIds.png (raw labels); per video, <stem>_mask.avi and <stem>_overlay.avi.
Train-time and fused (tools/deploy.py) checkpoints both work, with their training or
*_deploy.py config; RepVGG blocks are fused before inference. An .onnx file in place of
the checkpoint (tools/export_onnx.py, tools/quantize.py) runs in ONNX Runtime on the CPU,
with the config's test pipeline, classes and palette. Unreadable files are reported and
skipped. Outputs of an earlier run are replaced only with --force.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (training or *_deploy.py)')
    parser.add_argument('checkpoint', help='checkpoint file (train-time or fused), or .onnx')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders or video files')
    parser.add_argument('--out-dir', default='work_dirs/infer', help='where outputs go')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='mask opacity in the overlays, 0-1')
    parser.add_argument('--fp16', action='store_true', help='run in float16')
    parser.add_argument('--bf16', action='store_true',
                        help='run in bfloat16 (fast on CPUs with AMX or AVX512-BF16)')
    parser.add_argument('--device', help="e.g. 'cpu' or 'cuda:0' (default: cuda if available)")
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward pass (same-size images are batched)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--force', action='store_true',
                        help='replace outputs of an earlier run in --out-dir')
    args = parser.parse_args(argv)
    if not 0 <= args.opacity <= 1:
        parser.error(f'--opacity must be in [0, 1], got {args.opacity}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    return args


def run(args):
    from repseg.segment import segment

    segment(args.config, args.checkpoint, args.inputs, args.out_dir, device=args.device,
            batch_size=args.batch_size, opacity=args.opacity, fp16=args.fp16,
            progress=not args.no_progress, force=args.force, bf16=args.bf16)


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
