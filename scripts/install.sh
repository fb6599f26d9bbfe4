#!/usr/bin/env bash
# Install llmkit (editable, from this checkout) into the active Python environment.
#   scripts/install.sh            # llmkit itself
#   scripts/install.sh test,tiny  # with extras
#
# llama-cpp-python is compiled from source by pip (about 6 minutes on 2 cores; pip caches the wheel).
# Its build flags live here and nowhere else:
#   -march=native (GGML_NATIVE) for the machine's own SIMD, but without AMX: on virtual machines
#   that advertise AMX without supporting its tile state, ggml's AMX kernels crash with a general
#   protection fault on the first matrix multiply (seen on this project's build machines).
set -euo pipefail
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8}"
cd "$(dirname "$0")/.."
extras="${1:-}"
python -m pip install --upgrade pip >/dev/null
python -m pip install -e ".${extras:+[$extras]}"
