#!/usr/bin/env python
"""Train a segmentor (mmsegmentation's tools/train.py, with pre-flight checks), or a
classifier with a configs/classification config (mmpretrain's datasets and recipes).

Before anything is built, the config, dataset, and pretrained weights are checked; a
problem is reported in one paragraph and the tool exits with status 2. Without CUDA,
SyncBN becomes BN; several CPU processes train over gloo (tools/dist_train.sh).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in the work_dir')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic-mixed-precision training (CUDA)')
    parser.add_argument('--tensorboard', action='store_true',
                        help='also write loss, lr and mIoU for TensorBoard '
                             '(<work_dir>/<timestamp>/vis_data)')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='override config settings, e.g. model.backbone.arch=B1g2 '
                             'train_dataloader.batch_size=4')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='do not decode every frame before the run (it is cached, so '
                             'only new or changed frames cost time); logged when skipped')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (pytorch: started by torchrun, tools/dist_train.sh)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)  # torch.distributed.launch passes it
    return parser.parse_args(argv)


def run(args):
    from repseg.classification import is_classification_config, require_mmpretrain
    from repseg.cli import parse_cfg_options

    if is_classification_config(args.config):  # configs/classification: mmpretrain's stack
        require_mmpretrain()
        from repseg.classification.runner import run_train
    else:
        from repseg.mmseg.runner import run_train

    run_train(args.config, work_dir=args.work_dir, resume=args.resume, amp=args.amp,
              cfg_options=parse_cfg_options(args.cfg_options), launcher=args.launcher,
              skip_data_check=args.skip_data_check, tensorboard=args.tensorboard)


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
