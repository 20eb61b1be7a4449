#!/usr/bin/env python
"""Time segmentors (mmseg predict path, 'whole' mode) or classifiers; see docs/benchmarks.md.

Examples:
  tools/benchmark.py configs/pspnet_repvgg_b2.py --fp16 --channels-last \\
      --compare configs/pspnet_r101_d8.py
  tools/benchmark.py configs/pspnet_repvgg_b2.py --paper
  tools/benchmark.py --cls B1g2 B2            # + torchvision resnet50/101/152
  tools/benchmark.py configs/pspnet_repvgg_b1g2.py --shape 64 128 --iters 3 --device cpu
  tools/benchmark.py --pooling 2560 --fp16 --channels-last   # PSP pooling op alone
  tools/benchmark.py configs/pspnet_repvgg_b1g2_fast.py --shape 512 1024 --device cpu \\
      --threads 1 --int8 --bf16   # PyTorch fp32/bf16, ONNX Runtime fp32/INT8, interleaved

Random weights unless CHECKPOINT is given (it applies to CONFIG, not to --compare
configs); SyncBN is built as BN. Timing covers forward, resize of the logits to the input
size and arg-max, after --warmup untimed calls; TF32 is on for CUDA fp32 unless --paper.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# repseg.benchmark's defaults, for the help text: --help imports no torch (tested equal).
DEFAULT_SHAPE = (1024, 2048)
CLS_DEFAULTS = dict(batch=128, shape=(224, 224))
TORCHVISION_CLASSIFIERS = ('resnet50', 'resnet101', 'resnet152')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='segmentor config (not with --cls)')
    parser.add_argument('checkpoint', nargs='?', help='segmentor checkpoint (default: random)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help=f'input size (default {DEFAULT_SHAPE[0]} {DEFAULT_SHAPE[1]}; '
                             f"--cls: {CLS_DEFAULTS['shape'][0]} {CLS_DEFAULTS['shape'][1]})")
    parser.add_argument('--batch', type=int,
                        help=f"images per call (default 1; --cls: {CLS_DEFAULTS['batch']})")
    parser.add_argument('--fp16', action='store_true', help='float16 weights and inputs')
    parser.add_argument('--channels-last', action='store_true', help='NHWC memory format')
    parser.add_argument('--no-fuse', action='store_true',
                        help='time the train-time (three-branch) RepVGG model')
    parser.add_argument('--with-train-time', action='store_true',
                        help='also time the train-time model of every RepVGG config')
    parser.add_argument('--warmup', type=int, default=5, help='untimed calls (default 5)')
    parser.add_argument('--iters', type=int, default=30, help='timed calls (default 30)')
    parser.add_argument('--compare', nargs='+', default=[], metavar='CONFIG',
                        help='more configs timed in the same run; ratios are vs CONFIG')
    parser.add_argument('--paper', action='store_true',
                        help='paper protocol: batch 16, 713x713, fp32, TF32 off')
    parser.add_argument('--json', metavar='OUT', help='write the records as JSON')
    parser.add_argument('--force', action='store_true', help='replace an existing --json file')
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        help='default: cuda if available')
    parser.add_argument('--backend', choices=('pytorch', 'onnxruntime'), default='pytorch',
                        help='onnxruntime: export the fused model and time it on CPU')
    parser.add_argument('--cls', nargs='+', metavar='ARCH',
                        help='classification mode: RepVGG archs (train-time and fused) and '
                             f"torchvision {'/'.join(TORCHVISION_CLASSIFIERS)}; if no ResNet "
                             'is named, all three are added')
    parser.add_argument('--fast-pooling', choices=('auto', 'on', 'off'), default='auto',
                        help='PSP pyramid pooling as matmuls (repseg.mmseg.fast_psp); '
                             'auto: on with --fp16 or --channels-last')
    parser.add_argument('--threads', type=int,
                        help='CPU threads for torch (default: torch decides)')
    parser.add_argument('--pooling', type=int, metavar='CHANNELS',
                        help='time PSP pyramid pooling alone on a CHANNELS x H/8 x W/8 map: '
                             'adaptive_avg_pool2d vs the matmul form (B2: 2560)')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip FLOP counting (slow for big inputs on CPU)')
    parser.add_argument('--int8', nargs='*', metavar='MODEL.onnx',
                        help='CPU backend comparison: PyTorch fp32, ONNX Runtime fp32 and '
                             'INT8 (these files from tools/quantize.py, or the export '
                             'quantized on generated images), interleaved in one run')
    parser.add_argument('--bf16', action='store_true',
                        help='CPU backend comparison: add PyTorch bfloat16')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='config overrides, e.g. model.backbone.arch=A0')
    return parser.parse_args(argv)


def settings_from_args(args):
    import torch

    from repseg.benchmark import CLS_DEFAULTS, DEFAULT_SHAPE, PAPER_PROTOCOL, BenchmarkSettings
    from repseg.errors import InvalidArgumentError
    from repseg.inference import check_device

    defaults = CLS_DEFAULTS if args.cls else dict(batch=1, shape=DEFAULT_SHAPE)
    batch = args.batch or defaults['batch']
    shape = tuple(args.shape) if args.shape else defaults['shape']
    fp16, channels_last, tf32 = args.fp16, args.channels_last, True
    if args.paper:
        if args.fp16 or args.channels_last or args.batch or args.shape:
            raise InvalidArgumentError('--paper fixes batch 16, 713x713, fp32 NCHW: '
                                       'drop --fp16/--channels-last/--batch/--shape')
        batch, shape = PAPER_PROTOCOL['batch'], PAPER_PROTOCOL['shape']
        fp16, channels_last, tf32 = False, False, PAPER_PROTOCOL['tf32']
    if batch < 1 or min(shape) < 8:
        raise InvalidArgumentError(f'need --batch >= 1 and --shape >= 8 8, got {batch} and '
                                   f'{shape}')
    if args.iters < 1 or args.warmup < 0:
        raise InvalidArgumentError('need --iters >= 1 and --warmup >= 0')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    check_device(device)
    if args.backend == 'onnxruntime' and (device != 'cpu' or fp16 or channels_last):
        raise InvalidArgumentError('--backend onnxruntime times the fp32 export on CPU: use '
                                   '--device cpu without --fp16/--channels-last')
    return BenchmarkSettings(shape=shape, batch=batch, fp16=fp16, channels_last=channels_last,
                             warmup=args.warmup, iters=args.iters, device=device,
                             tf32=tf32, backend=args.backend, count_flops=not args.no_flops,
                             threads=args.threads,
                             fast_pooling=dict(auto=None, on=True, off=False)[args.fast_pooling])


def run(args):
    from repseg.benchmark import (TORCHVISION_CLASSIFIERS, benchmark_classifiers,
                                  benchmark_pooling, benchmark_segmentors)
    from repseg.cli import parse_cfg_options
    from repseg.errors import InvalidArgumentError
    from repseg.fileio import check_output_location, claim_outputs

    settings = settings_from_args(args)
    if args.json:
        check_output_location(args.json, is_folder=False, what='--json')
        claim_outputs([args.json], args.force, 'another --json file')
    if args.pooling is not None:
        if args.config or args.cls or args.compare:
            raise InvalidArgumentError('--pooling times the pooling op alone: no CONFIG, '
                                       '--cls or --compare')
        if args.pooling < 1:
            raise InvalidArgumentError(f'--pooling needs a positive channel count, got '
                                       f'{args.pooling}')
        return benchmark_pooling(args.pooling, settings)
    if args.cls:
        if args.config or args.compare or args.checkpoint:
            raise InvalidArgumentError('--cls takes architectures, not configs or checkpoints')
        names = list(args.cls)
        if not any(n.lower() in TORCHVISION_CLASSIFIERS for n in names):
            names += list(TORCHVISION_CLASSIFIERS)
        return benchmark_classifiers(names, settings)
    if not args.config:
        raise InvalidArgumentError('give a CONFIG (or --cls ARCH ...)')
    if args.int8 is not None or args.bf16:
        return _compare_backends(args, settings)
    for config in [args.config, *args.compare]:
        if not Path(config).is_file():
            raise FileNotFoundError(f'config file not found: {config}')
    return benchmark_segmentors([args.config, *args.compare], settings, args.checkpoint,
                                fuse=not args.no_fuse, with_train_time=args.with_train_time,
                                cfg_options=parse_cfg_options(args.cfg_options))


def _compare_backends(args, settings):
    from repseg.backend_speed import compare_backends
    from repseg.cli import parse_cfg_options
    from repseg.errors import InvalidArgumentError

    if args.compare or args.no_fuse or args.with_train_time or args.backend != 'pytorch':
        raise InvalidArgumentError('--int8/--bf16 compare backends for one fused CONFIG: drop '
                                   '--compare, --no-fuse, --with-train-time and --backend')
    if not Path(args.config).is_file():
        raise FileNotFoundError(f'config file not found: {args.config}')
    return compare_backends(args.config, settings, args.checkpoint, args.int8 or (),
                            quantize=args.int8 is not None, bf16=args.bf16,
                            cfg_options=parse_cfg_options(args.cfg_options))


def report(args, records):
    from repseg.backend_speed import int8_speedups
    from repseg.benchmark import describe_environment, format_table, records_to_json

    print(describe_environment(records))
    print(format_table(records))
    for record in records:
        if record.label_agreement is not None and record is not records[0]:
            print(f'{record.name}: {100 * record.label_agreement:.2f}% of pixels labelled as '
                  f'by {records[0].name}')
    for name, ratio in int8_speedups(records):
        print(f'{name}: {ratio:.2f}x the speed of ONNX Runtime fp32')
    if args.json:
        records_to_json(records, args.json)
        print(f'records written to {args.json}')


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error

    with exit_on_user_error():
        report(args, run(args))


if __name__ == '__main__':
    main()
