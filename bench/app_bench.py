#!/usr/bin/env python3
"""The shop end to end: the `distributed` profile (one load balancer, three servers each with
web, app and MariaDB) brought up with the release binary, then wrk on the home page (a page of
the catalog: a LIMIT query and a COUNT over 1,008 products) and on a product page, through the
load balancer (LB -> web -> app -> database) and against one app alone. Then the same pages of
the `single-sqlite` profile's app alone, over its embedded SQLite file. Reports requests/s,
p50 and p99, and where the CPU went: each component's CPU time per request, from /proc, which
says what limits the page.

Usage: bench/app_bench.py [--seconds 10] [--conns 32] [--webstack PATH]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

SUBNET = "127.231.0.0/16"
LB = "127.231.1.10:8080"
APP = "127.231.2.1:9000"
SQLITE_SUBNET = "127.232.0.0/16"
SQLITE_APP = "127.232.2.1:9000"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process and its children that are still alive (mariadbd is a child)."""
    total = 0
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            with open(f"/proc/{p}/task/{p}/children") as f:
                frontier += [int(k) for k in f.read().split()]
        except OSError:
            pass
    return total / CLK_TCK


def wrk(url, conns, seconds):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout

    def ms(label):
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": int(errors.group(1)) if errors else 0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--webstack", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "webstack"))
    args = ap.parse_args()
    rows = measure(args, "distributed", SUBNET, [
        ("home page via LB", f"http://{LB}/"),
        ("product page via LB", f"http://{LB}/products/7"),
        ("home page, app alone", f"http://{APP}/"),
        ("product page, app alone", f"http://{APP}/products/7"),
    ])
    rows += measure(args, "single-sqlite", SQLITE_SUBNET, [
        ("home page, app on SQLite", f"http://{SQLITE_APP}/"),
        ("product page, app on SQLite", f"http://{SQLITE_APP}/products/7"),
    ])
    print(f"\n{'page':<28} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}  CPU µs per request (largest first)")
    for label, r, per_request in rows:
        top = sorted(per_request.items(), key=lambda kv: -kv[1])
        busy = ", ".join(f"{name} {us:.0f}" for name, us in top if us >= 1)
        print(f"{label:<28} {r['rps']:>8,.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['errors']:>6}  {busy}")


def measure(args, profile, subnet, targets):
    """Brings `profile` up, runs wrk on each (label, url) and takes it down again."""
    state = tempfile.mkdtemp(prefix="webstack-app-bench-")
    base = [args.webstack]
    up = subprocess.run(
        base + ["up", "-d", "--profile", profile, "--subnet", subnet, "--state-dir", state, "--timeout", "120"],
        capture_output=True, text=True,
    )
    try:
        if up.returncode != 0:
            sys.exit(f"webstack up failed:\n{up.stdout}\n{up.stderr}")
        status = json.loads(subprocess.run(
            base + ["status", "--json", "--state-dir", state], capture_output=True, text=True, check=True).stdout)
        pids = {}
        for host in status["hosts"]:
            for c in host["components"]:
                if c.get("pid"):
                    pids[f"{host['name']}/{c['name']}"] = c["pid"]
        rows = []
        for label, url in targets:
            wrk(url, args.conns, 2)  # warm-up: pools filled, pages cached by the database
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            result = wrk(url, args.conns, args.seconds)
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            per_request = {
                name: (after[name] - before[name]) * 1e6 / max(result["requests"], 1) for name in pids
            }
            rows.append((label, result, per_request))
        return rows
    finally:
        # A failed `up` leaves the stack running too; each run's databases are ~200 MB of disk.
        subprocess.run(base + ["down", "--state-dir", state], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)

if __name__ == "__main__":
    main()
