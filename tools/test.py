#!/usr/bin/env python
"""Evaluate a segmentor checkpoint (mmsegmentation's tools/test.py, with checks), or a
classifier's top-1 / top-5 with a configs/classification config (any RepVGG weights:
the authors', timm, mmpretrain, tools/train.py; --out DIR writes DIR/predictions.json).

Fuses every RepVGG block before testing (same labels, faster; --no-fuse tests the
train-time branches). Prints the per-class IoU / Acc table and mIoU, mAcc, aAcc, and
writes them to <work_dir>/metrics.json. --out DIR writes Cityscapes *_labelIds.png
predictions and prints the cityscapesscripts command that evaluates them (a DIR holding
predictions of an earlier run is refused without --force). The checkpoint must fit the config (fused checkpoints of
tools/deploy.py go with their *_deploy.py config); a misfit exits with status 2. An .onnx
file in place of the checkpoint (tools/export_onnx.py, tools/quantize.py) is tested with
ONNX Runtime on the CPU, through the same pipeline, test mode and metric.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file, or an .onnx model')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics.json')
    parser.add_argument('--out', help='write Cityscapes *_labelIds.png predictions here')
    parser.add_argument('--show-dir', help='save images drawn with predictions here')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--fp16', action='store_true', help='run in float16')
    parser.add_argument('--bf16', action='store_true',
                        help='run in bfloat16 (fast on CPUs with AMX or AVX512-BF16)')
    parser.add_argument('--no-fuse', dest='fuse', action='store_false',
                        help='test the train-time branches (default: fuse every RepVGG '
                             'block first: same labels, faster)')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='override config settings, e.g. test_dataloader.batch_size=2')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='do not decode every frame before the run (it is cached, so '
                             'only new or changed frames cost time); logged when skipped')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (pytorch: started by torchrun, tools/dist_test.sh)')
    parser.add_argument('--force', action='store_true',
                        help='write --out predictions over those of an earlier run')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_classification(args):
    """A classification config (configs/classification): top-1 / top-5, --out writes
    <DIR>/predictions.json (repseg.classification.runner)."""
    from mmengine.dist import get_rank

    from repseg.classification import require_mmpretrain

    require_mmpretrain()
    from repseg.classification.runner import PREDICTIONS_FILE, run_test
    from repseg.cli import parse_cfg_options
    from repseg.errors import InvalidArgumentError
    from repseg.fileio import check_output_location, claim_outputs

    for flag, on in (('--show-dir', args.show_dir), ('--tta', args.tta)):
        if on:
            raise InvalidArgumentError(f'{flag} is for segmentation configs; '
                                       f'{args.config} is a classification config')
    if args.out:
        check_output_location(args.out, is_folder=True, what='--out')
        claim_outputs([Path(args.out) / PREDICTIONS_FILE], args.force, 'another --out folder')
    metrics = run_test(args.config, args.checkpoint, work_dir=args.work_dir, out=args.out,
                       fp16=args.fp16, cfg_options=parse_cfg_options(args.cfg_options),
                       launcher=args.launcher, skip_data_check=args.skip_data_check,
                       fuse=args.fuse, bf16=args.bf16)
    if get_rank() == 0:
        print('  '.join(f"{name} {metrics[key]:.2f}" for name, key in (
            ('top-1', 'accuracy/top1'), ('top-5', 'accuracy/top5')) if key in metrics))


def run(args):
    from repseg.classification import is_classification_config

    if is_classification_config(args.config):
        return run_classification(args)
    from mmengine.dist import get_rank

    from repseg.cli import parse_cfg_options
    from repseg.fileio import check_output_location, claim_outputs
    from repseg.mmseg.hooks import LABELIDS_SUFFIX
    from repseg.mmseg.runner import run_test

    for folder, what in ((args.out, '--out'), (args.show_dir, '--show-dir')):
        if folder:
            check_output_location(folder, is_folder=True, what=what)
    if args.out:  # the Cityscapes evaluation reads every prediction in the folder
        claim_outputs(sorted(Path(args.out).glob(f'*{LABELIDS_SUFFIX}')), args.force,
                      'an empty --out folder')
    metrics = run_test(args.config, args.checkpoint, work_dir=args.work_dir, out=args.out,
                       show_dir=args.show_dir, tta=args.tta, fp16=args.fp16,
                       cfg_options=parse_cfg_options(args.cfg_options),
                       launcher=args.launcher, skip_data_check=args.skip_data_check,
                       fuse=args.fuse, bf16=args.bf16)
    if 'mIoU' in metrics and get_rank() == 0:
        print('mIoU {mIoU:.2f}  mAcc {mAcc:.2f}  aAcc {aAcc:.2f}'.format(**metrics))


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
