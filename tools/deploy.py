#!/usr/bin/env python
"""Fuse a trained RepVGG segmentor for inference (structural re-parameterization).

Writes OUT_DIR/<config stem>_deploy.pth and OUT_DIR/<config stem>_deploy.py; evaluate
them with `python tools/test.py OUT_DIR/<stem>_deploy.py OUT_DIR/<stem>_deploy.pth`.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import repseg  # noqa: E402,F401  (before mmseg: compat shims, backbone registration)
from repseg.checkpoint import CheckpointError  # noqa: E402
from repseg.mmseg.builder import ConfigKeyError  # noqa: E402
from repseg.mmseg.deploy import DeployVerificationError, deploy_segmentor  # noqa: E402
from repseg.logs import silence_known_warnings  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='training config of the checkpoint')
    parser.add_argument('checkpoint', help='train-time segmentor checkpoint (e.g. iter_7440.pth)')
    parser.add_argument('out_dir', help='folder for the fused checkpoint and config')
    args = parser.parse_args()
    silence_known_warnings()
    try:
        ckpt_path, cfg_path = deploy_segmentor(args.config, args.checkpoint, args.out_dir)
    except (FileNotFoundError, ValueError, ConfigKeyError, CheckpointError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
    except DeployVerificationError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)
    print(f'fused checkpoint: {ckpt_path}\nfused config:     {cfg_path}\n'
          f'evaluate with:    python tools/test.py {cfg_path} {ckpt_path}')


if __name__ == '__main__':
    main()
