#!/usr/bin/env bash
# tlspyo 0.3.0 vs tlsro on this machine, same workloads, one run (TLS on 127.0.0.1).
#
#   bench/compare-tlspyo/run.sh [compare.py options: --count-small N --count-large N --rounds R --warmup W --json]
#
# Builds tlsro-bench (release), makes a throwaway virtualenv in a temporary directory with
# tlspyo==0.3.0 and pyOpenSSL<26.2 (newer versions break tlspyo's credential generation), and runs
# compare.py with HOME pointing into that directory, so nothing of tlspyo touches the real home.
# Everything it made is removed at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

# A relative target directory means relative to the caller's directory; cargo runs elsewhere:
# make it absolute.
if [[ -n "${CARGO_TARGET_DIR:-}" && "$CARGO_TARGET_DIR" != /* ]]; then
    export CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
fi
echo "... building tlsro-bench (release)" >&2
(cd "$root" && cargo build --release --quiet -p tlsro-bench)
bench="${CARGO_TARGET_DIR:-$root/target}/release/tlsro-bench"
if [[ ! -x "$bench" ]]; then
    echo "error: $bench not found after the build" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tlsro-compare-tlspyo.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

echo "... virtualenv with tlspyo 0.3.0 in $work" >&2
"$python" -m venv "$work/venv"
# From here on, Python and pip see a home of their own (pip's cache, tlspyo's data directory).
export HOME="$work/home"
export XDG_DATA_HOME="$HOME/.local/share" XDG_CONFIG_HOME="$HOME/.config" XDG_CACHE_HOME="$HOME/.cache"
mkdir -p "$HOME"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check 'tlspyo==0.3.0' 'pyOpenSSL<26.2'

echo "... machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$work/venv/bin/python" "$here/compare.py" --tlsro-bench "$bench" "$@"
