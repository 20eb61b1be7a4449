#!/usr/bin/env python
"""Export a fused PSPNet/RepVGG segmentor, or a RepVGG classifier with a
configs/classification config, to ONNX and check it with onnxruntime.

  tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--dynamic] [--labels]
                       [--image PATH] [--force]

A train-time checkpoint is fused first; a fused config/checkpoint pair written by
tools/deploy.py works as well. The graph takes `image`, float32 N x 3 x H x W with pixel
values 0-255 in the channel order mmcv loads (BGR); normalization is inside. It returns
`logits` (N x classes x H x W, at input resolution) or, with --labels, the arg-max label
map (N x H x W, uint8). The check runs onnxruntime and mmseg's predict path ('whole'
mode) on IMAGE resized to H x W (default: a generated test image) and fails (exit 1,
OUT.onnx not written) when logits differ by 1e-3 or more (labels: fewer than 99.9% of
pixels equal). An existing OUT.onnx is replaced only with --force.

Classification configs (repseg.classification.export): the same input, `logits` N x
classes out; batch, height and width are always dynamic (tools/test.py runs OUT.onnx
through the config's test pipeline, last batch smaller). --shape defaults to the test
pipeline's crop (224; toy 56). The check compares onnxruntime with the PyTorch
classifier as loaded (train-time or fused, through its own data preprocessor) on 4
generated images, one of another size and --image as the test pipeline crops it; it
fails (exit 1, OUT.onnx not written) when a logit differs by more than 1e-3 times the
largest one (at least 1e-3) or a top-1 class differs. --labels is for segmentors.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_OPSET = 17  # repseg.export.DEFAULT_OPSET


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='segmentor config (train-time or *_deploy.py), '
                        'or a configs/classification config')
    parser.add_argument('checkpoint', help='checkpoint matching the config (a classifier: '
                        'any RepVGG weights, as tools/test.py takes)')
    parser.add_argument('out', help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size of the export and the check (default 1024 2048; '
                             "a classifier: its test crop, square)")
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width (checked at two sizes; a '
                             'classifier graph always is)')
    parser.add_argument('--labels', action='store_true',
                        help='output the arg-max label map instead of logits')
    parser.add_argument('--image', help='image for the check (default: a generated one)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset, >= 17 (default {DEFAULT_OPSET})')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='config overrides, e.g. model.backbone.arch=A0')
    parser.add_argument('--force', action='store_true', help='replace an existing OUT.onnx')
    args = parser.parse_args(argv)
    if not args.out.lower().endswith('.onnx'):  # test.py and infer.py go by the suffix
        parser.error(f'OUT must be an .onnx file, got {args.out}: the file is an ONNX graph, '
                     'and tools/test.py and tools/infer.py run a model in ONNX Runtime when '
                     'its name ends in .onnx')
    return args


def check_shapes(shape, dynamic):
    """The export shape, plus a second, odd-sized one for a dynamic export."""
    shapes = [tuple(shape)]
    if dynamic:
        shapes.append((max(8, shape[0] * 3 // 4 + 1), max(8, shape[1] * 3 // 4 + 3)))
    return shapes


def check_arguments(args):
    """The checks of every export, before anything is loaded or written."""
    from repseg.errors import InvalidArgumentError
    from repseg.fileio import check_output_location, claim_outputs

    if args.shape is not None and min(args.shape) < 8:
        raise InvalidArgumentError(f'--shape must be at least 8 8, got {args.shape}')
    if args.opset < 17:
        raise InvalidArgumentError(f'--opset must be >= 17, got {args.opset}')
    check_output_location(args.out, is_folder=False, what='OUT.onnx')
    claim_outputs([args.out], args.force, 'another OUT.onnx')


def run_classification(args):
    """A configs/classification config: a fused classifier graph, checked against the
    PyTorch classifier (repseg.classification.export)."""
    from repseg.classification import require_mmpretrain
    from repseg.errors import InvalidArgumentError

    if args.labels:
        raise InvalidArgumentError(
            f'--labels is for segmentation configs: {args.config} is a classification '
            'config, whose graph outputs N x classes logits; leave out --labels')
    if args.shape is not None and args.shape[0] != args.shape[1]:
        raise InvalidArgumentError(f'--shape of a classifier is square (its test crop), got '
                                   f'{args.shape[0]} {args.shape[1]}; e.g. --shape 224 224')
    check_arguments(args)
    require_mmpretrain()
    from repseg.classification import export
    from repseg.classification.model import build_classifier
    from repseg.cli import parse_cfg_options
    from repseg.mmseg.config_file import load_config
    from repseg.models.reparam import fused_block_count

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    size = args.shape[0] if args.shape else export.eval_crop_size(cfg)
    image = export.pipeline_image(cfg, args.image) if args.image else None
    second = check_shapes((size, size), dynamic=True)[1][0]
    classifier = build_classifier(cfg, args.checkpoint)
    fused, blocks = fused_block_count(classifier)
    checks = export.export_classifier_verified(
        classifier, args.out, export.check_batches(size, second, image), size,
        opset=args.opset)
    size_mb = Path(args.out).stat().st_size / 2 ** 20
    source = 'fused weights' if fused == blocks else 'train-time weights, fused'
    print(f'wrote {args.out} ({size_mb:.1f} MB, opset {args.opset}, {blocks} RepVGG blocks '
          f'from {source}; input image N x 3 x H x W BGR 0-255, dynamic batch, height and '
          'width; output logits N x classes); onnx.checker passed')
    for check in checks:
        print(check.describe())


def run(args):
    from repseg.classification import is_classification_config

    if is_classification_config(args.config):
        return run_classification(args)
    from repseg.cli import parse_cfg_options
    from repseg.export import export_verified, load_image, synthetic_image
    from repseg.mmseg.builder import build_segmentor, load_config

    args.shape = args.shape or (1024, 2048)
    check_arguments(args)
    shapes = check_shapes(args.shape, args.dynamic)
    if args.image:
        images = [load_image(args.image, shape) for shape in shapes]
    else:
        images = [synthetic_image(shape) for shape in shapes]
    model = build_segmentor(load_config(args.config, parse_cfg_options(args.cfg_options)),
                            args.checkpoint)
    checks = export_verified(model, args.out, images, dynamic=args.dynamic,
                             labels=args.labels, opset=args.opset)
    size_mb = Path(args.out).stat().st_size / 2 ** 20
    output = 'labels (N x H x W, uint8)' if args.labels else 'logits (N x classes x H x W)'
    print(f'wrote {args.out} ({size_mb:.1f} MB, opset {args.opset}, '
          f"{'dynamic' if args.dynamic else 'static'} shape, output {output}); "
          'onnx.checker passed')
    for check in checks:
        print(check.describe())


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
