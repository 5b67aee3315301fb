#!/usr/bin/env python3
"""Replacing a running proxy under load, as each is meant to be replaced without downtime:
how many requests fail.

wrk keeps 64 keep-alive connections busy (the proxy scenario of proxy_bench.py: three nginx
origins, the proxy pinned to CPU 1, wrk to CPU 0) for 12 s while the proxy is replaced five
times, every 2 s:

- webstack: a new process (the new binary) with `webstack proxy --take-over OLD_PID`;
- HAProxy: `haproxy -sf OLD_PID` (a new process beside the old one), and HAProxy's
  master-worker mode reloaded with SIGUSR2 (new workers, the listeners kept by the master);
- nginx: SIGHUP to the master (new workers; the listeners kept by the master).

Prints requests, failed requests (wrk's socket errors: connect, read, write, timeout, and
non-2xx answers) and requests/s for each.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import proxy_bench as pb  # noqa: E402

SECONDS = 12
HANDOVERS = 5
FIRST_AT = 1.5
EVERY = 2.0


def pinned(cmd):
    return subprocess.Popen(["taskset", "-c", "1"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(proc, timeout=15):
    """Waits for a process told to stop to exit; kills it past `timeout`."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class NewProcessEachTime:
    """webstack --take-over and haproxy -sf: each hand-over starts a process that retires the old."""

    def __init__(self, start, successor):
        self.start, self.successor = start, successor
        self.current = None

    def up(self):
        self.current = pinned(self.start)

    def hand_over(self):
        old = self.current
        self.current = pinned(self.successor(old.pid))
        finish(old)

    def down(self):
        pb.stop(self.current)


class ReloadedMaster:
    """HAProxy master-worker and nginx: a signal to the master replaces its workers."""

    def __init__(self, start, reload_signal):
        self.start, self.reload_signal = start, reload_signal
        self.master = None

    def up(self):
        self.master = pinned(self.start)

    def hand_over(self):
        self.master.send_signal(self.reload_signal)

    def down(self):
        pb.stop(self.master)


def contenders(work, webstack):
    haproxy_cfg = pb.write(work, "haproxy.cfg", pb.haproxy_config(work))
    webstack_cfg = pb.write(work, "webstack.toml", pb.webstack_config(work))
    nginx_cfg = pb.write(work, "nginx.conf", pb.nginx_config(work))
    nginx_e = os.path.join(work, "nginx-e.log")
    return {
        "webstack --take-over": NewProcessEachTime(
            [webstack, "proxy", "--config", webstack_cfg],
            lambda pid: [webstack, "proxy", "--config", webstack_cfg, "--take-over", str(pid)],
        ),
        "haproxy -sf": NewProcessEachTime(
            ["haproxy", "-f", haproxy_cfg], lambda pid: ["haproxy", "-f", haproxy_cfg, "-sf", str(pid)]
        ),
        "haproxy -W, USR2": ReloadedMaster(["haproxy", "-W", "-f", haproxy_cfg], signal.SIGUSR2),
        "nginx, HUP": ReloadedMaster(["nginx", "-c", nginx_cfg, "-e", nginx_e], signal.SIGHUP),
    }


def trial(contender):
    contender.up()
    try:
        pb.wait_listening(pb.PROXY)
        pb.load(pb.SCENARIOS["proxy"], 64, 1)  # warm-up: the origins' connections opened
        result = {}
        loader = threading.Thread(target=lambda: result.update(pb.load(pb.SCENARIOS["proxy"], 64, SECONDS)))
        started = time.monotonic()
        loader.start()
        time.sleep(FIRST_AT)
        done = []
        for _ in range(HANDOVERS):
            begun = time.monotonic()
            contender.hand_over()
            done.append(time.monotonic())
            time.sleep(max(0.0, EVERY - (done[-1] - begun)))
        loader.join()
        # Only the hand-overs over before wrk stopped count as done under load.
        result["handovers"] = sum(1 for t in done if t - started < SECONDS)
        return result
    finally:
        contender.down()


def failed_requests(result):
    """Non-2xx answers and wrk's socket errors (connect, read, write, timeout), summed."""
    socket_errors = sum(int(n) for n in result.get("socket_errors", "").replace(",", " ").split() if n.isdigit())
    return result["errors"] + socket_errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--webstack", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "webstack"))
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    os.environ["PATH"] += ":/usr/sbin"
    work = tempfile.mkdtemp(prefix="webstack-handover-")
    os.chmod(work, 0o755)
    try:
        pb.prepare_files(work, args.webstack)
        origin = pb.start(["nginx", "-c", pb.write(work, "origin.conf", pb.origin_config(work)),
                           "-e", os.path.join(work, "origin-e.log")], 0)
        try:
            for o in pb.ORIGINS:
                pb.wait_listening(o)
            rows = {name: [] for name in contenders(work, args.webstack)}
            for _ in range(args.trials):
                # Interleaved, so a noisy minute hurts each alike.
                for name, contender in contenders(work, args.webstack).items():
                    rows[name].append(trial(contender))
                    print(f"  {name}: trial {len(rows[name])}", file=sys.stderr)
        finally:
            pb.stop(origin)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{HANDOVERS} hand-overs in {SECONDS} s under wrk, 64 keep-alive connections, {args.trials} trials each")
    print(f"{'proxy':<22} {'hand-overs':>12} {'failed requests':>18} {'requests':>26} {'req/s':>24}")
    for name, results in rows.items():
        handovers = " / ".join(str(r["handovers"]) for r in results)
        failed = " / ".join(str(failed_requests(r)) for r in results)
        requests = " / ".join(str(r["requests"]) for r in results)
        rps = " / ".join(f"{r['rps']:,.0f}" for r in results)
        print(f"{name:<22} {handovers:>12} {failed:>18} {requests:>26} {rps:>24}")

if __name__ == "__main__":
    main()
