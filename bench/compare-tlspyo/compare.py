"""Side-by-side benchmark of tlspyo 0.3.0 and tlsro (tlsro-bench), same workloads, one run.

Run through run.sh, which makes a throwaway virtualenv with tlspyo and points HOME at a
temporary directory. Workloads (TLS on, 127.0.0.1):

- thr 100 B, 1 -> 1: one endpoint broadcasts COUNT objects to a group with one member;
  objects/s at the receiver, from the first send to the last object received.
- thr 1 MiB, 1 -> 1: the same with 1 MiB objects; MB/s (10^6 bytes) at the receiver.
- lat 100 B: A sends to B's group, B sends it back to A's group; one at a time; p50/p99/max
  after a warm-up (broadcast both ways, and produce both ways with standing credit).

tlspyo objects are `bytes` (pickled by tlspyo's default serializer); tlsro objects are the same
bytes with the RawBytes codec.
"""

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# tlspyo's relay listens on every interface (it passes no address to Twisted). Keep it on the
# loopback: the forked relay process inherits this wrapper. (Only the method on the class is
# wrapped; no reactor is created in this process, so the forked children each make their own.)
from twisted.internet import posixbase

_listen_ssl = posixbase.PosixReactorBase.listenSSL
_listen_tcp = posixbase.PosixReactorBase.listenTCP


def _loopback_ssl(self, port, factory, context, backlog=50, interface=""):
    return _listen_ssl(self, port, factory, context, backlog, interface or "127.0.0.1")


def _loopback_tcp(self, port, factory, backlog=50, interface=""):
    return _listen_tcp(self, port, factory, backlog, interface or "127.0.0.1")


posixbase.PosixReactorBase.listenSSL = _loopback_ssl
posixbase.PosixReactorBase.listenTCP = _loopback_tcp

import logging  # noqa: E402
import warnings  # noqa: E402

import tlspyo  # noqa: E402
from tlspyo.credentials import generate_tls_credentials  # noqa: E402

# tlspyo's self-signed certificate has serial number 0 (cryptography warns on every load), and
# tlspyo logs a warning for every message sent before its connection is up: neither matters here.
warnings.filterwarnings("ignore")
logging.getLogger("tlspyo").setLevel(logging.ERROR)

STALL = 30.0  # seconds without progress before a run is declared lossy


class Lost(Exception):
    pass


def free_port():
    """A port the OS considers free on 127.0.0.1 now (tlspyo wants numbers, not port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TlspyoRun:
    """A tlspyo relay on 127.0.0.1 with TLS, and endpoints connected to it."""

    def __init__(self, keys_dir, password):
        self.keys_dir = keys_dir
        self.password = password
        self.port = free_port()
        self.relay = tlspyo.Relay(
            port=self.port,
            password=password,
            local_com_port=free_port(),
            security="TLS",
            keys_dir=keys_dir,
        )
        self.endpoints = []

    def endpoint(self, groups):
        ep = tlspyo.Endpoint(
            ip_server="127.0.0.1",
            port=self.port,
            password=self.password,
            groups=groups,
            local_com_port=free_port(),
            security="TLS",
            keys_dir=self.keys_dir,
            hostname="default",
            recon_initial_delay=0.2,
        )
        self.endpoints.append(ep)
        return ep

    def stop(self):
        for ep in self.endpoints:
            ep.stop()
        self.relay.stop()


def payload(size, index):
    buf = bytearray((i * 31) % 251 for i in range(size))
    if size >= 8:
        struct.pack_into("<Q", buf, 0, index)
    return buf


def wait_for(ep, what):
    """Blocks until `ep` receives something; the alarm set by the caller bounds it."""
    got = ep.pop(max_items=1, blocking=True)
    if not got:
        raise Lost(f"nothing received while waiting for {what}")
    return got


def tlspyo_thr(keys_dir, password, size, count):
    run = TlspyoRun(keys_dir, password)
    try:
        receiver = run.endpoint(("thr",))
        sender = run.endpoint(("thr-sender",))
        # Both connected: the receiver gets the probe live or as the group's retained value.
        sender.broadcast(b"probe", "thr")
        wait_for(receiver, "the probe")

        base = payload(size, 0)
        received = 0
        last_at = None
        done = threading.Event()
        error = []

        def receive():
            nonlocal received, last_at
            try:
                while received < count:
                    items = receiver.receive_all(blocking=True)
                    real = [i for i in items if i != b"probe"]
                    received += len(real)
                    last_at = time.perf_counter()
            except Exception as e:  # noqa: BLE001
                error.append(e)
            finally:
                done.set()

        t = threading.Thread(target=receive, daemon=True)
        t.start()
        start = time.perf_counter()
        for i in range(count):
            if size >= 8:
                struct.pack_into("<Q", base, 0, i)
            sender.broadcast(bytes(base), "thr")
        sent_secs = time.perf_counter() - start
        seen = -1
        while not done.wait(STALL):
            if received == seen:
                break
            seen = received
        secs = (last_at or time.perf_counter()) - start
        lost = count - received
        return {
            "sent": count,
            "received": received,
            "lost": lost,
            "seconds": secs,
            "objects_per_s": received / secs if secs > 0 else 0.0,
            "mb_per_s": received * size / 1e6 / secs if secs > 0 else 0.0,
            "sent_per_s": count / sent_secs if sent_secs > 0 else 0.0,
        }
    finally:
        run.stop()


def percentiles(samples_ns):
    s = sorted(samples_ns)
    if not s:
        return {}

    def at(q):
        rank = min(max(int(-(-q * len(s) // 1)), 1), len(s))
        return s[rank - 1] / 1000.0

    return {
        "p50_us": at(0.5),
        "p90_us": at(0.9),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": s[-1] / 1000.0,
        "mean_us": sum(s) / len(s) / 1000.0,
    }


def tlspyo_lat(keys_dir, password, size, rounds, warmup, mode):
    run = TlspyoRun(keys_dir, password)
    try:
        a = run.endpoint(("lat-a",))
        b = run.endpoint(("lat-b",))
        total = rounds + warmup + 1
        if mode == "produce":
            a.notify({"lat-a": total})
            b.notify({"lat-b": total})
            send = lambda ep, obj, group: ep.produce(obj, group)  # noqa: E731
        else:
            send = lambda ep, obj, group: ep.broadcast(obj, group)  # noqa: E731

        def echo():
            while True:
                for item in b.receive_all(blocking=True):
                    send(b, item, "lat-a")

        threading.Thread(target=echo, daemon=True).start()
        send(a, b"probe", "lat-b")
        wait_for(a, "the probe's echo")

        samples = []
        for r in range(rounds + warmup):
            obj = bytes(payload(size, r))
            t0 = time.perf_counter_ns()
            send(a, obj, "lat-b")
            got = a.pop(max_items=1, blocking=True)
            elapsed = time.perf_counter_ns() - t0
            if not got or got[0][:8] != obj[:8]:
                raise Lost(f"round {r}: a different object came back")
            if r >= warmup:
                samples.append(elapsed)
        out = percentiles(samples)
        out["rounds"] = len(samples)
        out["lost"] = 0
        return out
    finally:
        run.stop()


def tlsro(bench, args):
    """Runs tlsro-bench with --json, its relay in a process of its own as tlspyo's relay is;
    returns its (last) JSON line."""
    cmd = [bench] + args + ["--relay-process", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode not in (0, 3):
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}")
    if proc.stderr.strip():
        sys.stderr.write(proc.stderr)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    return json.loads(lines[-1])


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def alarm(seconds):
    def on_alarm(signum, frame):
        raise Lost(f"no result within {seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tlsro-bench", required=True, help="path of the tlsro-bench binary")
    p.add_argument("--count-small", type=int, default=400_000, help="tlspyo: objects of 100 B (thr)")
    p.add_argument("--count-large", type=int, default=300, help="tlspyo: objects of 1 MiB (thr)")
    p.add_argument("--rounds", type=int, default=300, help="tlspyo: timed round trips (lat)")
    p.add_argument("--warmup", type=int, default=30, help="tlspyo: warm-up round trips (lat)")
    p.add_argument("--tlsro-duration", default="5s", help="tlsro: how long each thr run sends")
    p.add_argument("--tlsro-rounds", type=int, default=10_000, help="tlsro: timed round trips (lat)")
    p.add_argument("--tlsro-warmup", type=int, default=1_000, help="tlsro: warm-up round trips (lat)")
    p.add_argument("--json", action="store_true", help="also print one JSON line per result")
    a = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="tlspyo-keys-") as keys_dir:
        # tlspyo's own credentials: a self-signed RSA certificate for the name "default".
        generate_tls_credentials(folder_path=keys_dir)
        password = os.urandom(16).hex()

        rows = []  # (workload, unit, tlspyo, tlsro, higher_is_better, lost_py, lost_rs, samples)

        def samples(r):
            n = r.get("received", r.get("rounds"))
            return fmt(n) if n is not None else "n/a"

        def record(name, unit, py, rs, key, higher):
            rows.append(
                (name, unit, py.get(key), rs.get(key), higher, py.get("lost"), rs.get("lost"),
                 f"{samples(py)} / {samples(rs)}")
            )
            if "error" in py:
                print(f"!!! tlspyo {name}: {py['error']}", file=sys.stderr)
            if a.json:
                print(json.dumps({"workload": name, "key": key, "tlspyo": py, "tlsro": rs}))

        for size, count, label, key, unit in [
            (100, a.count_small, "thr 100 B 1 -> 1", "objects_per_s", "objects/s"),
            (1024 * 1024, a.count_large, "thr 1 MiB 1 -> 1", "mb_per_s", "MB/s"),
        ]:
            print(f"... tlspyo {label} ({count:,} objects)", file=sys.stderr, flush=True)
            alarm(600)
            try:
                py = tlspyo_thr(keys_dir, password, size, count)
            except Lost as e:
                py = {"lost": count, "error": str(e)}
            signal.alarm(0)
            print(f"... tlsro  {label} ({a.tlsro_duration})", file=sys.stderr, flush=True)
            rs = tlsro(a.tlsro_bench, ["thr", "--size", str(size), "--duration", a.tlsro_duration])
            record(label, unit, py, rs, key, True)

        for mode in ["broadcast", "produce"]:
            label = f"lat 100 B ({mode})"
            print(f"... tlspyo {label} ({a.rounds:,} rounds)", file=sys.stderr, flush=True)
            alarm(600)
            try:
                py = tlspyo_lat(keys_dir, password, 100, a.rounds, a.warmup, mode)
            except Lost as e:
                py = {"lost": 1, "error": str(e)}
            signal.alarm(0)
            print(f"... tlsro  {label} ({a.tlsro_rounds:,} rounds)", file=sys.stderr, flush=True)
            rs = tlsro(
                a.tlsro_bench,
                [
                    "lat", "--size", "100", "--mode", mode,
                    "--rounds", str(a.tlsro_rounds), "--warmup", str(a.tlsro_warmup),
                ],
            )
            record(f"{label} p50", "µs", py, rs, "p50_us", False)
            record(f"{label} p99", "µs", py, rs, "p99_us", False)

    header = ["workload", "unit", "tlspyo 0.3.0", "tlsro", "tlsro advantage", "lost (py / rs)", "objects or rounds (py / rs)"]
    table = []
    for name, unit, py, rs, higher, lost_py, lost_rs, counts in rows:
        if py and rs:
            ratio = rs / py if higher else py / rs
            adv = f"{ratio:,.1f}x"
        else:
            adv = "n/a"
        digits = 1 if unit in ("MB/s", "µs") else 0
        table.append([name, unit, fmt(py, digits), fmt(rs, digits), adv, f"{fmt(lost_py)} / {fmt(lost_rs)}", counts])
    widths = [max(len(str(r[i])) for r in table + [header]) for i in range(len(header))]
    print()
    print("== tlspyo 0.3.0 vs tlsro, TLS, 127.0.0.1, same machine, same run")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join((c.rjust(w) if i in (2, 3, 4) else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    print()
    print("tlsro advantage: tlsro / tlspyo for rates, tlspyo / tlsro for latencies (higher is better for tlsro).")


if __name__ == "__main__":
    main()
