#!/usr/bin/env bash
# Train on several processes with torchrun: one per GPU, or CPU processes over gloo when
# there is no GPU (SyncBN then becomes BN).
#   tools/dist_train.sh CONFIG NUM_PROCESSES [train.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# PYTHON selects the interpreter (default: python).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NUM_PROCESSES [train.py options]" >&2
    exit 2
fi
source "$(dirname "$0")/torchrun_launch.sh"
launch "$2" train.py "$1" "${@:3}"
