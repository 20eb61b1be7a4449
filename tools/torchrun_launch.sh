# Sourced by dist_train.sh and dist_test.sh: run a tool on several processes with torchrun.
#   launch NUM_PROCESSES TOOL [tool arguments]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# PYTHON selects the interpreter (default: python).
launch() {
    local processes=$1 tool=$2
    shift 2
    if ! [[ $processes =~ ^[1-9][0-9]*$ ]]; then
        echo "error: NUM_PROCESSES must be a positive integer (the processes to start," \
             "one per GPU), got '$processes'" >&2
        exit 2
    fi
    local tools
    tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    PYTHONPATH="$tools/..${PYTHONPATH:+:$PYTHONPATH}" \
    exec "${PYTHON:-python}" -m torch.distributed.run \
        --nnodes="${NNODES:-1}" \
        --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --master_port="${PORT:-29500}" \
        --nproc_per_node="$processes" \
        "$tools/$tool" --launcher pytorch "$@"
}
