#!/usr/bin/env python
"""Export a fused PSPNet/RepVGG segmentor to ONNX and check it with onnxruntime.

  tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--dynamic] [--labels]
                       [--image PATH]

A train-time checkpoint is fused first; a fused config/checkpoint pair written by
tools/deploy.py works as well. The graph takes `image`, float32 N x 3 x H x W with pixel
values 0-255 in the channel order mmcv loads (BGR); normalization is inside. It returns
`logits` (N x classes x H x W, at input resolution) or, with --labels, the arg-max label
map (N x H x W, uint8). The check runs onnxruntime and mmseg's predict path ('whole'
mode) on IMAGE resized to H x W (default: a generated test image) and fails (exit 1)
when logits differ by 1e-3 or more (labels: fewer than 99.9% of pixels equal).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import repseg  # noqa: E402,F401  (before mmseg: compat shims, backbone registration)
from mmengine.config import DictAction  # noqa: E402

from repseg.checkpoint import CheckpointError  # noqa: E402
from repseg.export import (DEFAULT_OPSET, LABELS_MIN_AGREEMENT, LOGITS_ATOL,  # noqa: E402
                           export_onnx, load_image, onnx_session, synthetic_image,
                           verify_onnx)
from repseg.mmseg.builder import ConfigKeyError, build_segmentor, load_config  # noqa: E402
from repseg.logs import silence_known_warnings  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='segmentor config (train-time or *_deploy.py)')
    parser.add_argument('checkpoint', help='segmentor checkpoint matching the config')
    parser.add_argument('out', help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, default=(1024, 2048), metavar=('H', 'W'),
                        help='input size of the export and the check (default 1024 2048)')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width (checked at two sizes)')
    parser.add_argument('--labels', action='store_true',
                        help='output the arg-max label map instead of logits')
    parser.add_argument('--image', help='image for the check (default: a generated one)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset, >= 17 (default {DEFAULT_OPSET})')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='config overrides, e.g. model.backbone.arch=A0')
    return parser.parse_args(argv)


def check_shapes(shape, dynamic):
    """The export shape, plus a second, odd-sized one for a dynamic export."""
    shapes = [tuple(shape)]
    if dynamic:
        shapes.append((max(8, shape[0] * 3 // 4 + 1), max(8, shape[1] * 3 // 4 + 3)))
    return shapes


def main(argv=None):
    args = parse_args(argv)
    silence_known_warnings()
    try:
        if min(args.shape) < 8:
            raise ValueError(f'--shape must be at least 8 8, got {args.shape}')
        model = build_segmentor(load_config(args.config, args.cfg_options), args.checkpoint)
        if args.image:
            images = [load_image(args.image, s) for s in check_shapes(args.shape, args.dynamic)]
        else:
            images = [synthetic_image(s) for s in check_shapes(args.shape, args.dynamic)]
        wrapper = export_onnx(model, args.out, args.shape, dynamic=args.dynamic,
                              labels=args.labels, opset=args.opset)
    except (FileNotFoundError, ValueError, ConfigKeyError, CheckpointError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
    size_mb = Path(args.out).stat().st_size / 2 ** 20
    output = 'labels (N x H x W, uint8)' if args.labels else 'logits (N x classes x H x W)'
    print(f'wrote {args.out} ({size_mb:.1f} MB, opset {args.opset}, '
          f"{'dynamic' if args.dynamic else 'static'} shape, output {output}); "
          'onnx.checker passed')
    session = onnx_session(args.out)
    passed = True
    for image in images:
        check = verify_onnx(args.out, wrapper, image, session)
        if check.max_abs_diff is not None:
            print(f'{check.shape[0]}x{check.shape[1]}: max |onnxruntime - torch| on logits = '
                  f'{check.max_abs_diff:.3g} (limit {LOGITS_ATOL:g}); '
                  f'labels equal on {100 * check.label_agreement:.3f}% of pixels')
        else:
            print(f'{check.shape[0]}x{check.shape[1]}: labels equal on '
                  f'{100 * check.label_agreement:.3f}% of pixels '
                  f'(limit {100 * LABELS_MIN_AGREEMENT:g}%)')
        passed &= check.passed
    if not passed:
        print('error: onnxruntime and PyTorch disagree beyond the tolerance', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
