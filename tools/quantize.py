#!/usr/bin/env python
"""Quantize a segmentor to INT8 for CPU deployment (ONNX Runtime), with an accuracy gate.

  tools/quantize.py CONFIG CHECKPOINT OUT.onnx --calib FOLDER|val [--num-calib N]
                    [--method minmax|percentile|entropy] [--per-tensor] [--shape H W]
                    [--max-drop POINTS] [--min-agreement PCT] [--max-float N] [--force]

Exports the fused segmentor (normalisation inside, logits output), runs ONNX Runtime's
quantization pre-processing, calibrates on N images read through the config's test
pipeline (a folder, or 'val': the config's val split), quantizes statically (QDQ,
per-channel int8 weights, uint8 activations) and checks the result: with the config's
val split at hand, mIoU of fp32 vs INT8 through ONNX Runtime (the drop must be at most
--max-drop points); without it, pixel agreement with fp32 on the calibration-excluded
images (at least --min-agreement percent). If the gate fails, the layers that cost the
most are kept in float, fewest first, until it passes. OUT.onnx is written only when the
gate passed (or with --save-failed); OUT's stem + .json holds the report. A failed gate
exits with status 2 and the measured numbers. An existing OUT.onnx (or its report) is
replaced only with --force.

Run the model with tools/test.py CONFIG OUT.onnx and tools/infer.py CONFIG OUT.onnx IMAGES;
time it with tools/benchmark.py CONFIG CHECKPOINT --int8 OUT.onnx.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# repseg.quantization's choices, for the help text: --help imports no torch (tested equal).
METHODS = ('minmax', 'percentile', 'entropy')
DEFAULT_OP_TYPES = ('Conv', 'Relu')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='segmentor config (training or *_deploy.py)')
    parser.add_argument('checkpoint', help='segmentor checkpoint (train-time or fused)')
    parser.add_argument('out', help='the INT8 .onnx file to write')
    parser.add_argument('--calib', required=True, metavar='FOLDER|val',
                        help="calibration images: a folder (recursive) or 'val' for the "
                             "config's val split")
    parser.add_argument('--num-calib', type=int, default=16, metavar='N',
                        help='calibration images (the first N; default 16)')
    parser.add_argument('--method', choices=METHODS, default='minmax',
                        help='activation range calibration (default minmax)')
    parser.add_argument('--per-tensor', action='store_true',
                        help='one weight scale per tensor instead of per output channel')
    parser.add_argument('--reduce-range', action='store_true',
                        help='7-bit weights (ONNX Runtime advice for CPUs without VNNI)')
    parser.add_argument('--op-types', nargs='+', default=list(DEFAULT_OP_TYPES), metavar='OP',
                        help=f"ONNX op types to quantize (default: {' '.join(DEFAULT_OP_TYPES)})")
    parser.add_argument('--format', choices=('qdq', 'qoperator'), default='qdq',
                        help='QDQ (default) or QOperator (QLinearConv) graph')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='fixed input size of the graph (default: dynamic; calibration '
                             'images are resized to it)')
    parser.add_argument('--max-drop', type=float, default=1.0, metavar='POINTS',
                        help='largest accepted mIoU drop, val split (default 1.0)')
    parser.add_argument('--min-agreement', type=float, default=98.0, metavar='PCT',
                        help='smallest accepted pixel agreement with fp32 when there are '
                             'no labels (default 98)')
    parser.add_argument('--max-float', type=int, default=8, metavar='N',
                        help='layers the sensitivity step may keep in float (default 8; '
                             '0: no sensitivity step)')
    parser.add_argument('--threads', type=int, help='ONNX Runtime threads for the checks')
    parser.add_argument('--save-failed', action='store_true',
                        help='write OUT.onnx even if the gate fails (still exits 2)')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing OUT.onnx and its report')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='config overrides, e.g. model.backbone.arch=A0')
    args = parser.parse_args(argv)
    if not args.out.lower().endswith('.onnx'):
        parser.error(f'OUT must be an .onnx file, got {args.out}')
    return args


def run(args):
    from repseg.cli import parse_cfg_options
    from repseg.fileio import check_output_location, claim_outputs
    from repseg.quantization import (GateFailure, GateSettings, QuantizeInputError,
                                     QuantSettings, quantize_segmentor, report_path)

    check_output_location(args.out, is_folder=False, what='OUT.onnx')
    claim_outputs([args.out, report_path(args.out)], args.force, 'another OUT.onnx')
    try:
        settings = QuantSettings(method=args.method, per_channel=not args.per_tensor,
                                 reduce_range=args.reduce_range,
                                 op_types=tuple(args.op_types), quant_format=args.format)
        gate = GateSettings(max_drop=args.max_drop, min_agreement=args.min_agreement,
                            max_float=args.max_float)
    except ValueError as error:
        raise QuantizeInputError(str(error)) from None
    try:
        report = quantize_segmentor(
            args.config, args.checkpoint, args.out, args.calib, args.num_calib, settings,
            gate, shape=args.shape, threads=args.threads,
            cfg_options=parse_cfg_options(args.cfg_options), save_failed=args.save_failed,
            progress=not args.no_progress)
    except GateFailure as failure:
        print(failure.report.summary(), flush=True)
        raise
    print(report.summary())
    print(f'wrote {args.out} ({Path(args.out).stat().st_size / 2 ** 20:.1f} MB); report in '
          f'{report_path(args.out)}')


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
