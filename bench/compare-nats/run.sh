#!/usr/bin/env bash
# nats-server (Debian's 2.9) vs tlsro on this machine, same workloads, one run (TLS 1.3 on
# 127.0.0.1, both with an authentication secret).
#
#   bench/compare-nats/run.sh [--duration SECS] [--rounds R] [--warmup W] [--json]
#
# Installs nats-server with apt-get when it is missing (as root), builds tlsro-bench, tlsro-relay
# and the NATS client of this folder (release), makes throwaway credentials with
# `tlsro-relay credentials generate` (ECDSA P-256, for 127.0.0.1) that nats-server serves too,
# starts nats-server on a port the OS picks, and runs the comparison. Everything it made is
# removed at the end and the server is stopped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-}"
# A relative target directory means relative to the caller's directory; cargo runs elsewhere:
# make it absolute.
if [[ -n "$target" && "$target" != /* ]]; then
    target="$PWD/$target"
    export CARGO_TARGET_DIR="$target"
fi

if ! command -v nats-server >/dev/null; then
    echo "... installing nats-server (apt-get)" >&2
    apt-get install -y -q nats-server >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q nats-server >/dev/null; }
fi

echo "... building tlsro-bench, tlsro-relay and the NATS client (release)" >&2
(cd "$root" && cargo build --release --quiet -p tlsro-bench -p tlsro-relay)
(cd "$here" && cargo build --release --quiet)
bin="${target:-$root/target}/release"
client="${target:-$here/target}/release/tlsro-compare-nats"

work="$(mktemp -d "${TMPDIR:-/tmp}/tlsro-compare-nats.XXXXXX")"
server=""
cleanup() {
    # nats-server exits with status 1 on SIGTERM: nothing here may stop the cleanup.
    set +e
    if [[ -n "$server" ]]; then
        kill "$server" 2>/dev/null
        wait "$server" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/tlsro-relay" credentials generate --dir "$work/creds" --hostname localhost --ip 127.0.0.1 >/dev/null
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# -p -1: a port the OS picks; nats-server writes it to a ports file.
nats-server -a 127.0.0.1 -p -1 --tls --tlscert "$work/creds/relay.pem" --tlskey "$work/creds/relay.key" \
    --auth "$token" --ports_file_dir "$work" >"$work/nats.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    ports=$(ls "$work"/nats-server_*.ports 2>/dev/null | head -n 1 || true)
    [[ -n "$ports" ]] && break
    sleep 0.1
done
if [[ -z "${ports:-}" ]]; then
    echo "error: nats-server did not start:" >&2
    cat "$work/nats.log" >&2
    exit 1
fi
url=$(grep -o 'tls://[^"]*' "$ports" | head -n 1)
url=${url:-"tls://$(grep -o '127.0.0.1:[0-9]*' "$ports" | head -n 1)"}

echo "... machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "... $(nats-server --version) at $url" >&2
version=$(nats-server --version | grep -o 'v[0-9][0-9.]*' | head -n 1)
"$client" --nats "$url" --nats-version "${version:-?}" --token "$token" --ca "$work/creds/ca.pem" \
    --tlsro-bench "$bin/tlsro-bench" "$@"
