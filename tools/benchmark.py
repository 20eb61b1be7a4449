#!/usr/bin/env python
"""Time segmentors (mmseg predict path, 'whole' mode), classifiers, the CPU backends, the
fast-inference call paths, or the whole benchmark matrix; see docs/benchmarks.md.

Examples:
  tools/benchmark.py configs/pspnet_repvgg_b2.py --fp16 --channels-last \\
      --compare configs/pspnet_r101_d8.py
  tools/benchmark.py configs/pspnet_repvgg_b2.py --paper
  tools/benchmark.py --cls B1g2 B2            # + torchvision resnet50/101/152
  tools/benchmark.py configs/pspnet_repvgg_b1g2.py --shape 64 128 --iters 3 --device cpu
  tools/benchmark.py --pooling 2560 --fp16 --channels-last   # PSP pooling op alone
  tools/benchmark.py configs/pspnet_repvgg_b1g2_fast.py --shape 256 512 --device cpu \\
      --threads 1 --int8 --bf16   # PyTorch fp32/bf16, ONNX Runtime fp32/INT8, interleaved
  tools/benchmark.py configs/pspnet_repvgg_b2.py --fp16 --channels-last --variants
      # mmseg predict, the predictor, each fast-inference option, all; interleaved
  tools/benchmark.py --matrix --json matrix.json      # the issue-9 matrix and its targets
  tools/benchmark.py --matrix --profile matrix.json --profile-out profile.txt

Random weights (BN statistics calibrated on image-like inputs) unless CHECKPOINT is given
(it applies to CONFIG, not to --compare configs); SyncBN is built as BN. Timing covers
forward, resize of the logits to the input size and arg-max, after --warmup untimed
calls; TF32 is on for CUDA fp32 unless --paper (and off for --variants, whose reference is
plain fp32). --matrix --smoke runs the matrix on tiny models on the CPU. Exit status: 0
done, 2 bad arguments, 1 a matrix with failed records.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Copies of library constants for the help text: --help imports no torch (tested equal).
DEFAULT_SHAPE = (1024, 2048)  # repseg.speed.benchmark
CLS_DEFAULTS = dict(batch=128, shape=(224, 224))  # repseg.speed.benchmark
TORCHVISION_CLASSIFIERS = ('resnet50', 'resnet101', 'resnet152')  # repseg.speed.models
VARIANT_NAMES = ('mmseg predict', 'predictor', '+conv_relu', '+factored_psp',
                 '+resize_argmax', '+cuda_graph', 'all', '+compile_model',
                 'all + compile_model')  # repseg.fast_inference VARIANTS, COMPILE_VARIANTS
MATRIX_ONLY = ('smoke', 'profile', 'profile_out', 'profile_all', 'profile_limit')


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
    parser.add_argument('--iters', type=int, default=30,
                        help='timed calls (default 30; --variants: per round)')
    parser.add_argument('--compare', nargs='+', default=[], metavar='CONFIG',
                        help='more configs timed in the same run; ratios are vs CONFIG')
    parser.add_argument('--paper', action='store_true',
                        help='paper protocol: batch 16, 713x713, fp32, TF32 off')
    parser.add_argument('--json', metavar='OUT', help='write the records as JSON')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing --json (--profile-out) file')
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
    parser.add_argument('--variants', nargs='*', metavar='NAME', help=(
        'the fast-inference call paths of CONFIG side by side, interleaved, with their '
        f'pixel agreement against fused fp32 (default: all of {VARIANT_NAMES[:-2]})'))
    parser.add_argument('--rounds', type=int, default=2,
                        help='--variants: interleaved rounds of --iters calls (default 2)')
    parser.add_argument('--compile', action='store_true',
                        help='--variants: add the torch.compile paths (minutes for big '
                             'models); --matrix: time torch.compile of the fp16 label path')
    parser.add_argument('--matrix', action='store_true',
                        help='the benchmark matrix of issue 9 in one process (PSPNet R-50/'
                             'R-101-D8, RepVGG B1g2(-fast), B2(-fast)), its targets and '
                             'profiles; --json is written after every record')
    parser.add_argument('--smoke', action='store_true', help='--matrix on tiny models (CPU)')
    parser.add_argument('--profile', metavar='MATRIX_JSON',
                        help='--matrix: profile the records of the targets this result missed')
    parser.add_argument('--profile-out', metavar='FILE', help='where the profile tables go')
    parser.add_argument('--profile-all', action='store_true',
                        help="profile every target's records, met or not")
    parser.add_argument('--profile-limit', type=int, metavar='N',
                        help='profile at most N records (default: all that qualify)')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='config overrides, e.g. model.backbone.arch=A0')
    args = parser.parse_args(argv)
    if args.profile and not args.profile_out:
        parser.error('--profile needs --profile-out FILE')
    args.given = {dest for dest, value in vars(args).items()
                  if value != parser.get_default(dest)}
    return args


def settings_from_args(args):
    import torch

    from repseg.errors import InvalidArgumentError
    from repseg.inference import check_device
    from repseg.speed.benchmark import (CLS_DEFAULTS, DEFAULT_SHAPE, PAPER_PROTOCOL,
                                        BenchmarkSettings)

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


def _refuse(args, flags, mode: str) -> None:
    """``mode`` takes none of ``flags`` (dest names): name the ones given."""
    from repseg.errors import InvalidArgumentError

    given = [f"--{flag.replace('_', '-')}" if flag not in ('config', 'checkpoint')
             else flag.upper() for flag in flags if flag in args.given]
    if given:
        raise InvalidArgumentError(f"{mode}: drop {', '.join(given)}")


def claim_json(args) -> None:
    from repseg.fileio import check_output_location, claim_outputs

    for option, path in (('--json', args.json), ('--profile-out', args.profile_out)):
        if path:
            check_output_location(path, is_folder=False, what=option)
            claim_outputs([path], args.force, f'another {option} file')


def run(args):
    """The records to report, or the matrix's exit status (it prints its own tables)."""
    from repseg.errors import InvalidArgumentError
    from repseg.speed.benchmark import (benchmark_classifiers, benchmark_pooling,
                                        benchmark_segmentors)
    from repseg.speed.models import TORCHVISION_CLASSIFIERS

    if args.matrix:
        return run_matrix(args)
    _refuse(args, MATRIX_ONLY, 'only --matrix takes --smoke and the --profile options')
    if args.variants is None:
        _refuse(args, ('rounds', 'compile'), '--rounds and --compile go with --variants '
                '(--compile also with --matrix)')
    settings = settings_from_args(args)
    claim_json(args)
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
    for config in [args.config, *args.compare]:
        if not Path(config).is_file():
            raise FileNotFoundError(f'config file not found: {config}')
    if args.variants is not None:
        return _variants(args, settings)
    if args.int8 is not None or args.bf16:
        return _compare_backends(args, settings)
    from repseg.cli import parse_cfg_options

    return benchmark_segmentors([args.config, *args.compare], settings, args.checkpoint,
                                fuse=not args.no_fuse, with_train_time=args.with_train_time,
                                cfg_options=parse_cfg_options(args.cfg_options))


def _compare_backends(args, settings):
    from repseg.cli import parse_cfg_options
    from repseg.errors import InvalidArgumentError
    from repseg.speed.backends import compare_backends

    if args.compare or args.no_fuse or args.with_train_time or args.backend != 'pytorch':
        raise InvalidArgumentError('--int8/--bf16 compare backends for one fused CONFIG: drop '
                                   '--compare, --no-fuse, --with-train-time and --backend')
    return compare_backends(args.config, settings, args.checkpoint, args.int8 or (),
                            quantize=args.int8 is not None, bf16=args.bf16,
                            cfg_options=parse_cfg_options(args.cfg_options))


def _variants(args, settings):
    from repseg.cli import parse_cfg_options
    from repseg.speed.variants import measure_variants

    _refuse(args, ('compare', 'no_fuse', 'with_train_time', 'backend', 'int8', 'bf16',
                   'paper'), '--variants times the call paths of one fused CONFIG')
    return measure_variants(args.config, settings, args.rounds, args.compile,
                            args.variants or None, args.checkpoint,
                            parse_cfg_options(args.cfg_options))


def run_matrix(args) -> int:
    import torch
    from mmengine.logging import MMLogger

    from repseg.inference import check_device
    from repseg.speed.goals import evaluate
    from repseg.speed.matrix import full_plan, run_compiled, run_matrix as measure, smoke_plan
    from repseg.speed.report import matrix_markdown

    _refuse(args, ('config', 'checkpoint', 'shape', 'batch', 'fp16', 'channels_last',
                   'no_fuse', 'with_train_time', 'compare', 'paper', 'backend', 'cls',
                   'fast_pooling', 'threads', 'pooling', 'int8', 'bf16', 'variants',
                   'rounds', 'cfg_options'), '--matrix has its own models, shapes and settings')
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    check_device(args.device)
    claim_json(args)
    plan = smoke_plan(args.device) if args.smoke else full_plan(args.device)
    # mmengine's current logger from here on: the per-call INFO lines stay quiet, the
    # matrix prints one line per record itself.
    MMLogger.get_instance('speed_matrix', log_level='WARNING')
    log = lambda message: print(message, flush=True)  # noqa: E731
    json_out = Path(args.json) if args.json else None
    if args.profile:
        profile(args, plan, log)
        return 0
    result = (run_compiled if args.compile else measure)(plan, json_out, log)
    matrix = result.to_dict()
    print(matrix_markdown(matrix, [] if args.compile else evaluate(matrix)))
    return 1 if result.errors else 0


def profile(args, plan, log):
    from repseg.fileio import write_text_atomically
    from repseg.speed.goals import evaluate, keys_to_profile
    from repseg.speed.matrix import load_matrix
    from repseg.speed.profiling import profile_keys
    from repseg.speed.report import goals_table

    matrix = load_matrix(args.profile)
    verdicts = evaluate(matrix)
    keys = keys_to_profile(verdicts, every_target=args.profile_all)[:args.profile_limit]
    missed = [v.text for v in verdicts if v.met is False]
    header = (f"Per-op profiles ({plan.device}); targets missed: {'; '.join(missed) or 'none'}"
              f"{' (profiling every target: --profile-all)' if args.profile_all else ''}\n")
    write = lambda text: write_text_atomically(args.profile_out, text)  # noqa: E731
    write(header + ('' if keys else 'nothing to profile\n'))
    profile_keys(plan, keys, write, log, header)
    print(goals_table(verdicts))


def report(args, result) -> None:
    import json

    from repseg.fileio import write_text_atomically
    from repseg.speed.backends import int8_speedups
    from repseg.speed.record import records_to_json
    from repseg.speed.report import (agreement_lines, describe_environment, records_table,
                                     variants_markdown)

    if not isinstance(result, list):  # --variants
        print(variants_markdown(result))
        if args.json:
            write_text_atomically(args.json, json.dumps(result.to_dict(), indent=2) + '\n')
            print(f'result written to {args.json}')
        return
    print(describe_environment(result))
    print(records_table(result))
    for line in agreement_lines(result, result[0].name if result else ''):
        print(line)
    for name, ratio in int8_speedups(result):
        print(f'{name}: {ratio:.2f}x the speed of ONNX Runtime fp32')
    if args.json:
        records_to_json(result, args.json)
        print(f'records written to {args.json}')


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error

    with exit_on_user_error():
        result = run(args)
        if isinstance(result, int):
            sys.exit(result)
        report(args, result)


if __name__ == '__main__':
    main()
