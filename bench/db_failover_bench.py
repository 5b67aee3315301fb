#!/usr/bin/env python3
"""Database failover figures: the distributed stack from the release binary; a client writes
(creates a product as the shop's admin) through the load balancer every 10 ms and records each
acknowledged write; the primary's db component is killed with SIGKILL (`webstack kill
server-01/db`, mariadbd dies with it). Reports, per trial: how long writes stopped (the longest
wait between two acknowledged writes around the kill), writes that failed, and acknowledged
writes missing afterwards on the new primary (asked of MariaDB itself). Each trial is a fresh
stack (a second automatic failover within 30 s is refused by design).

Targets (the database issue): 0 missing, always; writes back within 2 s. Orchestrator and MHA
take 10-30 s; a scripted promotion about 0.2 s once the failure is known (../shared/notes).

Usage: bench/db_failover_bench.py [--trials 3] [--webstack PATH]
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SUBNET = "127.233.0.0/16"
LB = ("127.233.1.10", 8080)
SQL = {"server-01": "127.233.2.1", "server-02": "127.233.2.2", "server-03": "127.233.2.3"}


def request(method, path, body=None, cookie=None):
    conn = http.client.HTTPConnection(*LB, timeout=10)
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read().decode()
    cookies = [v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie"]
    conn.close()
    return r.status, data, cookies


def admin_cookie(state):
    with open(os.path.join(state, "secrets.json")) as f:
        secrets = json.load(f)
    body = json.dumps({"email": "admin@foobar.com", "password": secrets["shop_admin_password"]})
    for _ in range(150):
        try:
            status, _, cookies = request("POST", "/api/v1/session", body)
            if status == 200:
                return "; ".join(cookies), secrets["db_admin_password"]
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("the admin never could log in")


def count_present(host, password, ids):
    query = f"SELECT COUNT(*) FROM products WHERE id IN ({','.join(map(str, ids))})"
    out = subprocess.run(
        ["mariadb", "-h", host, "-P", "3306", "-u", "webstack_admin", "-N", "-B", "foobar", "-e", query],
        env={**os.environ, "MYSQL_PWD": password}, capture_output=True, text=True,
    )
    return int(out.stdout.strip() or 0)


def trial(webstack):
    state = tempfile.mkdtemp(prefix="webstack-db-failover-")
    cmd = lambda *a: subprocess.run([webstack, *a, "--state-dir", state], capture_output=True, text=True)
    up = cmd("up", "-d", "--profile", "distributed", "--subnet", SUBNET, "--timeout", "150")
    try:
        if up.returncode != 0:
            sys.exit(f"webstack up failed:\n{up.stdout}{up.stderr}")
        cookie, db_password = admin_cookie(state)
        writes, stop = [], threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    status, body, _ = request("POST", "/api/v1/products",
                                              json.dumps({"name": f"Bench item {i}", "price_cents": 100}), cookie)
                    writes.append((time.monotonic(), json.loads(body)["id"] if status == 201 else None, status))
                except (OSError, ValueError, KeyError) as e:
                    writes.append((time.monotonic(), None, str(e)))
                time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1.5)
        killed = time.monotonic()
        cmd("kill", "server-01/db")
        time.sleep(5)
        stop.set()
        thread.join()
        acked = [(t, i) for t, i, _ in writes if i is not None]
        gaps = [b[0] - a[0] for a, b in zip(acked, acked[1:]) if b[0] > killed]
        failed = [s for _, i, s in writes if i is None]
        nodes = json.loads(cmd("db", "status", "--json").stdout or "[]")
        primary = next((n["name"] for n in nodes if n.get("role") == "primary"), None)
        ids = [i for _, i in acked]
        missing = len(ids) - count_present(SQL[primary], db_password, ids) if primary else len(ids)
        return {"stopped_ms": max(gaps) * 1000 if gaps else float("nan"), "failed": len(failed),
                "missing": missing, "acknowledged": len(ids), "new_primary": primary}
    finally:
        # A failed `up` leaves the stack running too; each trial's databases are ~200 MB of disk.
        cmd("down")
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--webstack", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "webstack"))
    args = ap.parse_args()
    results = []
    for n in range(args.trials):
        r = trial(args.webstack)
        results.append(r)
        print(f"  trial {n + 1}: writes stopped {r['stopped_ms']:.0f} ms, {r['failed']} failed, "
              f"{r['missing']} of {r['acknowledged']} acknowledged missing, new primary {r['new_primary']}")
    stopped = [r["stopped_ms"] for r in results]
    print(f"\ndatabase failover ({args.trials} trials): writes stopped median {statistics.median(stopped):.0f} ms, "
          f"max {max(stopped):.0f} ms; failed writes {sum(r['failed'] for r in results)}; "
          f"acknowledged writes missing {sum(r['missing'] for r in results)}")


if __name__ == "__main__":
    main()
