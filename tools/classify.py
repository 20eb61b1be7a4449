#!/usr/bin/env python
"""Classify images, folders (recursively) and videos (frame by frame) with RepVGG weights.

WEIGHTS is any source repseg reads: the authors' RepVGG-B2-train.pth, timm
(timm/repvgg_b2.rvgg_in1k), mmpretrain (URL), repseg or tools/train.py classification
checkpoints; train-time or fused. The arch comes from --arch or is guessed from the
weights (the log says which). The model is fused before it runs. Prints, per image, the
top-k classes as `index  name  probability` (ImageNet names for 1000 classes, read from
torchvision; a tools/train.py checkpoint's own class names). Unreadable files are skipped
with one line each. --json OUT writes
[{"image": path, "topk": [{"index": i, "name": s, "prob": p}, ...]}, ...].
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('weights', help='weights file, URL or hub name (train-time or fused)')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders or video files')
    parser.add_argument('--arch', help='RepVGG arch, e.g. B2 (default: guessed from the weights)')
    parser.add_argument('--topk', type=int, default=5, help='classes shown per image')
    parser.add_argument('--device', help="e.g. 'cpu' or 'cuda:0' (default: cuda if available)")
    parser.add_argument('--fp16', action='store_true', help='run in float16')
    parser.add_argument('--bf16', action='store_true',
                        help='run in bfloat16 (fast on CPUs with AMX or AVX512-BF16)')
    parser.add_argument('--json', metavar='OUT', help='also write the predictions to OUT')
    parser.add_argument('--no-fuse', dest='fuse', action='store_false',
                        help='run the train-time branches (default: fuse first, same '
                             'predictions, faster)')
    parser.add_argument('--input-size', type=int, metavar='C',
                        help='crop C x C after resizing the shorter side to C / 0.875 '
                             '(default: 224 after 256; D2se 320 after 320)')
    parser.add_argument('--force', action='store_true', help='replace an existing --json file')
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f'--topk must be at least 1, got {args.topk}')
    if args.input_size is not None and args.input_size < 32:
        parser.error(f'--input-size must be at least 32, got {args.input_size}')
    return args


def run(args):
    from repseg.classification import require_mmpretrain

    require_mmpretrain()
    from repseg.classification.predict import classify
    from repseg.fileio import claim_outputs

    if args.json:
        claim_outputs([args.json], args.force, 'another --json path')
    classify(args.weights, args.inputs, arch=args.arch, topk=args.topk, device=args.device,
             fp16=args.fp16, bf16=args.bf16, fuse=args.fuse, json_out=args.json,
             input_size=args.input_size)


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
