#!/usr/bin/env bash
# Install llmkit from this checkout into a Python environment (the active one, or $PYTHON's).
#   scripts/install.sh                      # editable, llmkit itself
#   scripts/install.sh test,tiny            # with extras
#   PYTHON=/opt/llmkit/bin/python scripts/install.sh --no-editable tiny   # e.g. for a service
#
# llama-cpp-python is compiled from source by pip (about 6 minutes on 2 cores; pip caches the wheel).
# Its build flags live here and nowhere else:
#   -march=native (GGML_NATIVE) for the machine's own SIMD, but without AMX: on virtual machines
#   that advertise AMX without supporting its tile state, ggml's AMX kernels crash with a general
#   protection fault on the first matrix multiply (seen on this project's build machines).
set -euo pipefail
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8}"
python="${PYTHON:-python}"
editable=(-e)
if [ "${1:-}" = "--no-editable" ]; then
    editable=()
    shift
fi
extras="${1:-}"
cd "$(dirname "$0")/.."
"$python" -m pip install --upgrade pip >/dev/null
"$python" -m pip install "${editable[@]}" ".${extras:+[$extras]}"
