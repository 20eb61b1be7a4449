#!/usr/bin/env python
"""Time the fast-inference options of one segmentor side by side, in one process.

For CONFIG (random weights, BN statistics set from the input; or CHECKPOINT), fused and
prepared as --dtype says: mmseg's predict, the tensor-only predictor, each option alone
(cuDNN conv+bias+ReLU, compiled resize+arg-max, CUDA graph) and all together, each with
its pixel agreement against the fused float32 model (TF32 off). See
repseg/fast_inference/variants.py and docs/benchmarks.md.

Examples:
  tools/speed_variants.py configs/pspnet_repvgg_b2.py --json variants_b2.json
  tools/speed_variants.py configs/pspnet_r101_d8.py --compile
  tools/speed_variants.py configs/pspnet_repvgg_b1g2.py --shape 64 128 --device cpu \\
      --variants 'mmseg predict' predictor +conv_relu
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# repseg.fast_inference.variants' VARIANTS and COMPILE_VARIANTS, for the help text:
# --help imports no torch (tested equal).
VARIANT_NAMES = ('mmseg predict', 'predictor', '+conv_relu', '+factored_psp',
                 '+resize_argmax', '+cuda_graph', 'all', '+compile_model',
                 'all + compile_model')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='segmentor config')
    parser.add_argument('checkpoint', nargs='?', help='segmentor checkpoint (default: random)')
    parser.add_argument('--shape', type=int, nargs=2, default=(1024, 2048), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--dtype', choices=('fp16-cl', 'fp32'), default='fp16-cl',
                        help='fp16-cl: float16 channels-last (default); fp32: float32 NCHW')
    parser.add_argument('--device', choices=('cuda', 'cpu'),
                        help='default: cuda if available')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls per round')
    parser.add_argument('--iters', type=int, default=10, help='timed calls per round')
    parser.add_argument('--rounds', type=int, default=2, help='interleaved rounds')
    parser.add_argument('--compile', action='store_true',
                        help='also torch.compile the whole model (minutes for big models)')
    parser.add_argument('--variants', nargs='+', metavar='NAME',
                        help=f'only these: {", ".join(map(repr, VARIANT_NAMES))}')
    parser.add_argument('--threads', type=int,
                        help='CPU threads for torch (default: torch decides)')
    parser.add_argument('--json', metavar='OUT', help='write the result as JSON')
    parser.add_argument('--force', action='store_true', help='replace an existing --json file')
    return parser.parse_args(argv)


def run(args):
    import torch

    from repseg.fast_inference.variants import format_variants, measure_speed_variants
    from repseg.fileio import check_output_location, claim_outputs, write_text_atomically

    if args.json:
        check_output_location(args.json, is_folder=False, what='--json')
        claim_outputs([args.json], args.force, 'another --json file')
    result = measure_speed_variants(
        args.config, tuple(args.shape), args.batch,
        args.device or ('cuda' if torch.cuda.is_available() else 'cpu'),
        fp16=args.dtype == 'fp16-cl', channels_last=args.dtype == 'fp16-cl',
        warmup=args.warmup, iters=args.iters, rounds=args.rounds,
        compile_model=args.compile, variants=args.variants, checkpoint=args.checkpoint,
        threads=args.threads)
    print(format_variants(result))
    if args.json:
        write_text_atomically(args.json, json.dumps(result.to_dict(), indent=2) + '\n')
        print(f'result written to {args.json}')


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error

    with exit_on_user_error():
        run(args)


if __name__ == '__main__':
    main()
