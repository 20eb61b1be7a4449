#!/usr/bin/env python
"""Fuse a trained RepVGG segmentor for inference (structural re-parameterization).

Writes OUT_DIR/<config stem>_deploy.pth and OUT_DIR/<config stem>_deploy.py; evaluate
them with `python tools/test.py OUT_DIR/<stem>_deploy.py OUT_DIR/<stem>_deploy.pth`.
Existing outputs are replaced only with --force; both files are checked before they are
moved into place.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='training config of the checkpoint')
    parser.add_argument('checkpoint', help='train-time segmentor checkpoint (e.g. iter_7440.pth)')
    parser.add_argument('out_dir', help='folder for the fused checkpoint and config')
    parser.add_argument('--force', action='store_true',
                        help='replace the outputs of an earlier deploy into OUT_DIR')
    return parser.parse_args(argv)


def run(args):
    from repseg.mmseg.deploy import deploy_segmentor

    ckpt_path, cfg_path = deploy_segmentor(args.config, args.checkpoint, args.out_dir,
                                           force=args.force)
    print(f'fused checkpoint: {ckpt_path}\nfused config:     {cfg_path}\n'
          f'evaluate with:    python tools/test.py {cfg_path} {ckpt_path}')


def main(argv=None):
    args = parse_args(argv)
    from repseg.cli import run_tool

    run_tool(run, args)


if __name__ == '__main__':
    main()
