#!/usr/bin/env python
"""The benchmark matrix of issue 9 in one process (repseg/speed/matrix.py), its targets,
and profiles of the targets it missed.

  tools/speed_matrix.py [--smoke] [--device cuda] --json matrix.json     # measure, print tables
  tools/speed_matrix.py --compile --json compile.json                     # + torch.compile paths
  tools/speed_matrix.py --profile matrix.json --profile-out profile.txt   # per-op tables

PSPNet R-50-D8, R-101-D8, RepVGG B1g2, B1g2-fast, B2, B2-fast (train-time and fused) at
batch 1, 1024x2048 in fp32 (TF32) and fp16 channels-last; the paper protocol (batch 16,
713x713, fp32, TF32 off); call paths (label path, CUDA graph, each speed option); the fused
B2 backbone against a dense fp16 matmul; a training iteration of B2 and R-101-D8 at
713x713 batch 2 with AMP. Random weights (calibrated BN). --smoke: tiny models, CPU.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--smoke', action='store_true', help='tiny models (CPU check)')
    parser.add_argument('--device', choices=('cuda', 'cpu'),
                        help='default: cuda when available, else cpu')
    parser.add_argument('--json', metavar='OUT', help='write the result here (after each record)')
    parser.add_argument('--force', action='store_true',
                        help='replace the --json / --profile-out files of an earlier run')
    parser.add_argument('--compile', action='store_true',
                        help='time torch.compile of the fp16 label path instead')
    parser.add_argument('--profile', metavar='MATRIX_JSON',
                        help='profile the records of the targets this matrix result missed')
    parser.add_argument('--profile-out', metavar='FILE', help='where the tables go')
    parser.add_argument('--profile-all', action='store_true',
                        help="profile every target's records, met or not")
    parser.add_argument('--profile-limit', type=int, metavar='N',
                        help='profile at most N records (default: all that qualify)')
    args = parser.parse_args(argv)
    if args.profile and not args.profile_out:
        parser.error('--profile needs --profile-out FILE')
    return args


def profile(args, plan, log):
    from repseg.fileio import write_text_atomically
    from repseg.speed.matrix import load_matrix
    from repseg.speed.profiling import profile_keys
    from repseg.speed.report import targets_table
    from repseg.speed.targets import evaluate, keys_to_profile

    matrix = load_matrix(args.profile)
    verdicts = evaluate(matrix)
    keys = keys_to_profile(verdicts, every_target=args.profile_all)[:args.profile_limit]
    missed = [v.text for v in verdicts if v.met is False]
    header = (f"Per-op profiles ({plan.device}); targets missed: {'; '.join(missed) or 'none'}"
              f"{' (profiling every target: --profile-all)' if args.profile_all else ''}\n")
    write = lambda text: write_text_atomically(args.profile_out, text)  # noqa: E731
    write(header + ('' if keys else 'nothing to profile\n'))
    profile_keys(plan, keys, write, log, header)
    print(targets_table(verdicts))


def run(args) -> int:
    import torch
    from mmengine.logging import MMLogger

    from repseg.fileio import check_output_location, claim_outputs
    from repseg.inference import check_device
    from repseg.speed.matrix import full_plan, run_compiled, run_matrix, smoke_plan
    from repseg.speed.report import matrix_markdown
    from repseg.speed.targets import evaluate

    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    check_device(args.device)
    for option, path in (('--json', args.json), ('--profile-out', args.profile_out)):
        if path:
            check_output_location(path, is_folder=False, what=option)
            claim_outputs([path], args.force, f'another {option} file')
    plan = smoke_plan(args.device) if args.smoke else full_plan(args.device)
    # mmengine's current logger from here on: repseg.benchmark's per-call INFO lines stay
    # quiet, the matrix prints one line per record itself.
    MMLogger.get_instance('speed_matrix', log_level='WARNING')
    log = lambda message: print(message, flush=True)  # noqa: E731
    json_out = Path(args.json) if args.json else None
    if args.profile:
        profile(args, plan, log)
        return 0
    if args.compile:
        result = run_compiled(plan, json_out, log)
    else:
        result = run_matrix(plan, json_out, log)
    matrix = result.to_dict()
    print(matrix_markdown(matrix, [] if args.compile else evaluate(matrix)))
    return 1 if result.errors else 0


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import exit_on_user_error

    with exit_on_user_error():
        status = run(args)
    sys.exit(status)


if __name__ == '__main__':
    main()
