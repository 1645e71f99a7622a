#!/usr/bin/env bash
# Raspberry Pi check: run `edgecnn bench` and `edgecnn validate` in an emulated
# Raspberry Pi OS bookworm (arm64) root under qemu, and compare with x86.
#
#   scripts/pi_check.sh ARTIFACT_DIR DATA_SPEC [--runs N] [--venvs a,b] [--root DIR]
#
# The logic is devtools/pi_check.py; this picks the interpreter (one with
# edgecnn and its runtimes installed: $EDGECNN_PYTHON, else `python`, else
# `python3`) and runs it as root (chroot, mount and debootstrap need root).
# Writes ARTIFACT_DIR/pi_check.json; exit 0 = passed or skipped (host cannot
# emulate), 1 = failed, 2 = bad arguments.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${EDGECNN_PYTHON:-$(command -v python || command -v python3)}"
if [ $# -lt 2 ]; then
    echo "usage: $0 ARTIFACT_DIR DATA_SPEC [--runs N] [--venvs LIST] [--root DIR]" >&2
    exit 2
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m devtools.pi_check "$@"
