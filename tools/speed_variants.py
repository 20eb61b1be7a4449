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

import repseg  # noqa: E402,F401  (before mmseg: compat shims, backbone registration)
import torch  # noqa: E402

from repseg.errors import UserError  # noqa: E402
from repseg.fast_inference.variants import (COMPILE_VARIANTS, VARIANTS,  # noqa: E402
                                            format_variants, measure_speed_variants)
from repseg.fileio import write_text_atomically  # noqa: E402


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
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls per round')
    parser.add_argument('--iters', type=int, default=10, help='timed calls per round')
    parser.add_argument('--rounds', type=int, default=2, help='interleaved rounds')
    parser.add_argument('--compile', action='store_true',
                        help='also torch.compile the whole model (minutes for big models)')
    parser.add_argument('--variants', nargs='+', metavar='NAME',
                        help=f'only these: {", ".join(map(repr, [*VARIANTS, *COMPILE_VARIANTS]))}')
    parser.add_argument('--threads', type=int, help='CPU threads for torch (default: torch decides)')
    parser.add_argument('--json', metavar='OUT', help='write the result as JSON')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        result = measure_speed_variants(
            args.config, tuple(args.shape), args.batch, args.device,
            fp16=args.dtype == 'fp16-cl', channels_last=args.dtype == 'fp16-cl',
            warmup=args.warmup, iters=args.iters, rounds=args.rounds,
            compile_model=args.compile, variants=args.variants, checkpoint=args.checkpoint,
            threads=args.threads)
    except (UserError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
    print(format_variants(result))
    if args.json:
        write_text_atomically(args.json, json.dumps(result.to_dict(), indent=2) + '\n')
        print(f'result written to {args.json}')


if __name__ == '__main__':
    main()
