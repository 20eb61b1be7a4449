#!/usr/bin/env bash
# One command for a GPU machine (see tools/gpu_check.py and docs/benchmarks.md):
#   tools/gpu_check.sh [--smoke] [--dry-run] OUT_DIR [--wheels DIR] [gpu_check.py options]
# --wheels DIR installs DIR/*.whl (no index, no dependencies) into a folder on PYTHONPATH
# first: the OpenMMLab stack and cityscapesscripts for an image that has only torch.
# The repository itself is used from here (PYTHONPATH), nothing is installed into it.
# PYTHON selects the interpreter (default: python3).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
args=()
wheels=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=${2:?"--wheels needs a folder"}; shift 2 ;;
        --wheels=*) wheels=${1#--wheels=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: gpu_check.sh: the interpreter '$python' is not found; set PYTHON to a" \
         "python with torch (default: python3)" >&2
    exit 2
fi
# The install log goes into OUT_DIR's logs archive. The trap removes it on every way out
# of this script; after the exec below, gpu_check.py moves it into its logs or removes
# it (bad arguments, a refused OUT_DIR, --dry-run), so nothing is left in TMPDIR.
if ! install_log=$(mktemp "${TMPDIR:-/tmp}/repseg_install.XXXXXX"); then
    echo "error: gpu_check.sh: cannot create a temporary file in '${TMPDIR:-/tmp}'; set" \
         "TMPDIR to a writable folder" >&2
    exit 2
fi
trap 'rm -f "$install_log"' EXIT
if [ -n "$wheels" ]; then
    site=${REPSEG_SITE:-${TMPDIR:-/tmp}/repseg_site}
    echo "gpu_check.sh: installing $wheels/*.whl into $site" | tee "$install_log"
    if ! "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade \
            --target "$site" "$wheels"/*.whl >>"$install_log" 2>&1; then
        echo "gpu_check.sh: installing the wheels failed; the steps will say what is missing:"
        cat "$install_log"
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$repo/tools/gpu_check.py" ${args[@]+"${args[@]}"} --install-log "$install_log"
