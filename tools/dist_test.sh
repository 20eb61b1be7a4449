#!/usr/bin/env bash
# Test on several processes with torchrun: one per GPU, or CPU processes over gloo.
#   tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [test.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# PYTHON selects the interpreter (default: python).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT NUM_PROCESSES [test.py options]" >&2
    exit 2
fi
source "$(dirname "$0")/torchrun_launch.sh"
launch "$3" test.py "$1" "$2" "${@:4}"
