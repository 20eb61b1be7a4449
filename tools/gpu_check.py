#!/usr/bin/env python
"""Prove repseg on a GPU machine in one command; tools/gpu_check.sh wraps it (wheels).

  tools/gpu_check.py [--smoke] [--dry-run] OUT_DIR [--work-dir DIR] [--budget S] [--compile]

Runs the CUDA tests, trains the toy city at 512x1024 on one GPU (torchrun, SyncBN, AMP),
resumes, tests (fp32, fp16), fuses, segments and exports it, and runs the benchmark
matrix; OUT_DIR gets summary.md (every target met or not), results.json, profile.txt and
logs.tar.gz, rewritten after every step. --smoke runs the same steps at tiny sizes on
the CPU. Exit status: 0 if every step passed, 1 otherwise, 2 on bad arguments.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir', nargs='?', help='where summary.md etc. go')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny sizes on the CPU: every code path in about a minute')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the steps, commands, sizes and time limits; run nothing')
    parser.add_argument('--work-dir', help='data, checkpoints and logs '
                                           '(default work_dirs/gpu_check)')
    parser.add_argument('--budget', type=float,
                        help='seconds for the whole run; steps that no longer fit are '
                             'skipped (default 540, smoke 600)')
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile of the fp16 label path (minutes)')
    parser.add_argument('--steps', help='comma-separated step names to run (default: all)')
    parser.add_argument('--install-log', help=argparse.SUPPRESS)  # from gpu_check.sh
    parser.add_argument('--probe-environment', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.out_dir and not args.probe_environment:
        parser.error('OUT_DIR is required')
    return args


def run(args) -> int:
    if args.probe_environment:  # the 'environment' step
        from repseg.gpu_check.environment import probe_environment

        print(json.dumps(probe_environment()))
        return 0
    from repseg.errors import InvalidArgumentError
    from repseg.fileio import check_output_location

    check_output_location(args.out_dir, is_folder=True, what='OUT_DIR')
    if args.work_dir:
        check_output_location(args.work_dir, is_folder=True, what='--work-dir')
    # only now: its imports write torch's compile cache folder into TMPDIR
    from repseg.gpu_check import GpuCheck

    budget = args.budget or (600 if args.smoke else 540)
    only = args.steps.split(',') if args.steps else None
    check = GpuCheck(args.out_dir, args.work_dir, smoke=args.smoke, budget=budget,
                     compile_step=args.compile, only=only)
    if only:
        unknown = set(only) - {step.name for step in GpuCheck(
            args.out_dir, args.work_dir, smoke=args.smoke, compile_step=True).steps()}
        if unknown:
            raise InvalidArgumentError(f"--steps: unknown step(s) {', '.join(sorted(unknown))}; "
                                       'the steps are listed by --dry-run')
    if args.dry_run:
        print(check.describe_plan())
        return 0
    return check.run(args.install_log)


def import_cli():
    """repseg.cli, or exit 2 saying what is missing: on a GPU image without the OpenMMLab
    stack (forgotten --wheels) nothing could run, and a traceback would hide the fix."""
    try:
        from repseg import cli
    except ImportError as error:
        if (getattr(error, 'name', None) or '').startswith('repseg'):
            raise  # a bug in repseg itself keeps its traceback
        print(f'error: repseg cannot be imported with {sys.executable}: {error}\n'
              'On an image that has torch but not the OpenMMLab stack, give a folder of '
              'wheels: tools/gpu_check.sh OUT_DIR --wheels DIR (docs/benchmarks.md, '
              '"GPU check and the H100 tables"); PYTHON=... picks another interpreter.',
              file=sys.stderr)
        sys.exit(2)
    return cli


def discard_install_log(argv) -> None:
    """Remove the temporary install log that gpu_check.sh passes as ``--install-log PATH``
    unless a run moved it into its logs: after bad arguments, a refused OUT_DIR or
    --dry-run it would stay in TMPDIR. Found in ``argv`` itself, which may be what
    :func:`parse_args` refused."""
    for flag, path in zip(argv, argv[1:]):
        if flag == '--install-log':
            Path(path).unlink(missing_ok=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        exit_on_user_error = import_cli().exit_on_user_error
        with exit_on_user_error():
            status = run(args)
    finally:
        discard_install_log(argv)
    sys.exit(status)


if __name__ == '__main__':
    main()
