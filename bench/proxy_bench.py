#!/usr/bin/env python3
"""Load balancer benchmark: webstack's proxy, HAProxy and nginx side by side, in one run.

The rig of ../shared/notes/benchmark-facts.md: three origin servers (nginx, answering "hello")
and wrk on CPU 0; the proxy under test alone on CPU 1, one worker thread, round robin over the
three origins with keep-alive on both sides. For each proxy and connection count: requests/s,
p50 and p99 latency, proxy CPU time per request, and peak RSS, as medians of several runs,
with each figure's ratio to HAProxy's.

Scenarios (--scenarios): proxy (the load balancer), static (a 16 KiB file from disk, against
nginx), tls (TLS keep-alive), handshake (a new TLS connection per request), h2 (HTTP/2 over TLS
with h2load), tls-origin (plain HTTP in, HTTPS to the origins: re-encryption, each origin's
certificate verified against the CA; at 64 connections). Every TLS scenario uses the same
ECDSA P-256 certificate from `webstack cert`.
Handshakes also run HAProxy told to prefer webstack's TLS 1.3 suite (haproxy-aes128): each
proxy's defaults are the comparison, and that row shows what the suite alone is worth.

Usage: bench/proxy_bench.py [--runs N] [--seconds 10] [--conns 64,256] [--scenarios proxy,static,tls,handshake,h2,tls-origin]
(every scenario by default, as `make bench` runs it)
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

NET = "127.0.9"  # the benchmark's own loopback range
ORIGINS = [f"{NET}.{i}:8081" for i in (11, 12, 13)]
# The same origins over HTTPS, for tls-origin; their certificate names ORIGIN_NAME.
TLS_ORIGINS = [f"{NET}.{i}:8444" for i in (11, 12, 13)]
ORIGIN_NAME = "server-01.foobar.com"
PROXY = f"{NET}.1:8080"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_listening(address, timeout=10):
    import socket

    host, port = address.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {address}")


def pids_of(root_pid):
    """The process and all its descendants (nginx and HAProxy fork workers)."""
    pids, frontier = [root_pid], [root_pid]
    while frontier:
        pid = frontier.pop()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        pids += kids
        frontier += kids
    return pids


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLK_TCK


def peak_rss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 1024


def parse_latency(text, label):
    m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def load(scenario, conns, seconds):
    if scenario["client"] == "h2load":
        return h2load(conns, seconds, scenario["path"])
    scheme = "https" if scenario["tls"] else "http"
    close = ["-H", "Connection: close"] if scenario["client"] == "wrk-close" else []
    return wrk(conns, seconds, f"{scheme}://www.foobar.com:{PROXY.rsplit(':', 1)[1]}{scenario['path']}", close)


def h2load(conns, seconds, path):
    log = tempfile.NamedTemporaryFile(prefix="h2load-", delete=False).name
    out = subprocess.run(
        ["taskset", "-c", "0", "h2load", "-c", str(conns), "-m", "10", "-D", str(seconds), "--log-file", log,
         f"https://{PROXY}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    failed = int(re.search(r"(\d+) failed", out).group(1))
    # h2load prints no percentiles: the log has one line per request, duration in µs last.
    with open(log) as f:
        durations = sorted(int(line.split()[-1]) for line in f if line.strip())
    os.unlink(log)
    pick = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))] / 1000 if durations else float("nan")
    return {"requests": done, "rps": rps, "p50": pick(0.50), "p99": pick(0.99), "errors": failed, "socket_errors": ""}


def wrk(conns, seconds, url, extra=()):
    # wrk cannot be told where a name lives: it connects to the address (and sends it as SNI,
    # which every proxy here answers with its one certificate).
    url = url.replace("www.foobar.com", PROXY.rsplit(":", 1)[0])
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "rps": rps,
        "p50": parse_latency(out, "50"),
        "p99": parse_latency(out, "99"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def start(cmd, cpu):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def origin_config(work):
    servers = "\n".join(
        f"  server {{ listen {o}; access_log off; keepalive_requests 1000000; location / {{ return 200 'hello'; }} }}"
        for o in ORIGINS
    )
    servers += "\n" + "\n".join(
        f"  server {{ listen {o} ssl; ssl_certificate {work}/site.pem; ssl_certificate_key {work}/site-key.pem; "
        f"ssl_protocols TLSv1.2 TLSv1.3; access_log off; keepalive_requests 1000000; location / {{ return 200 'hello'; }} }}"
        for o in TLS_ORIGINS
    )
    return f"""worker_processes 1;
daemon off;
pid {work}/origin.pid;
error_log {work}/origin-error.log;
events {{ worker_connections 4096; }}
http {{
  default_type text/plain;
{servers}
}}
"""


# webstack's own order of TLS 1.3 suites; HAProxy (OpenSSL) puts AES-256-GCM/SHA-384 first.
SAME_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def haproxy_config(work, tls=False, suites=None, origin_tls=False):
    verify = f" ssl verify required ca-file {work}/ca.pem sni str({ORIGIN_NAME}) verifyhost {ORIGIN_NAME}"
    servers = "\n".join(
        f"  server o{i} {o}" + (verify if origin_tls else "")
        for i, o in enumerate(TLS_ORIGINS if origin_tls else ORIGINS, 1)
    )
    bind = f"{PROXY}" + (f" ssl crt {work}/haproxy.pem alpn h2,http/1.1" if tls else "")
    ciphersuites = f"\n  ssl-default-bind-ciphersuites {suites}" if suites else ""
    return f"""global
  nbthread 1
  maxconn 9000{ciphersuites}
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
  option forwardfor
frontend www
  bind {bind}
  default_backend web
backend web
  balance roundrobin
{servers}
"""


def nginx_config(work, tls=False, static=False, origin_tls=False):
    servers = "\n".join(f"    server {o};" for o in (TLS_ORIGINS if origin_tls else ORIGINS))
    listen = f"{PROXY} ssl http2" if tls else PROXY
    # nginx 1.22 (Debian 12) offers TLS 1.3 only when told to; without it the client resumes
    # TLS 1.2 sessions, which skip the key exchange, and the comparison is not like for like.
    certs = (f"ssl_certificate {work}/site.pem; ssl_certificate_key {work}/site-key.pem; "
             "ssl_protocols TLSv1.2 TLSv1.3;") if tls else ""
    upstream_tls = (f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {work}/ca.pem; "
                    f"proxy_ssl_name {ORIGIN_NAME}; proxy_ssl_server_name on; proxy_ssl_session_reuse on;")
    scheme = "https" if origin_tls else "http"
    location = f"root {work}/www;" if static else f"""proxy_pass {scheme}://web;
      {upstream_tls if origin_tls else ""}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"""
    return f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream web {{
{servers}
    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen {listen};
    {certs}
    http2_max_requests 1000000;
    location / {{
      {location}
    }}
  }}
}}
"""


def webstack_config(work, tls=False, static=False, origin_tls=False):
    origins = TLS_ORIGINS if origin_tls else ORIGINS
    servers = "".join(f'[[pools.web.servers]]\nname = "o{i}"\naddress = "{o}"\n' for i, o in enumerate(origins, 1))
    if origin_tls:
        servers = f'[pools.web.tls]\nca = "{work}/ca.pem"\nserver_name = "{ORIGIN_NAME}"\n' + servers
    certs = f"""[listeners.tls]
[[listeners.tls.certificates]]
cert = "{work}/site.pem"
key = "{work}/site-key.pem"
""" if tls else ""
    target = f'static_root = "{work}/www"' if static else 'pool = "web"'
    return f"""name = "bench"
[[listeners]]
name = "www"
bind = "{PROXY}"
{certs}[[listeners.routes]]
prefix = "/"
{target}
[pools.web]
balance = "roundrobin"
{servers}"""


def write(work, name, text):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def proxies(work, webstack, scenario):
    """The command of each proxy for a scenario; HAProxy serves no files, so not `static`."""
    tls = scenario["tls"]
    static = scenario.get("static", False)
    origin_tls = scenario.get("origin_tls", False)
    tag = scenario["name"]
    chosen = {
        "webstack": [webstack, "proxy", "--config", write(work, f"webstack-{tag}.toml", webstack_config(work, tls, static, origin_tls))],
        "nginx": ["nginx", "-c", write(work, f"nginx-{tag}.conf", nginx_config(work, tls, static, origin_tls)), "-e", os.path.join(work, "nginx-e.log")],
    }
    if not static:
        config = haproxy_config(work, tls, origin_tls=origin_tls)
        chosen["haproxy"] = ["haproxy", "-f", write(work, f"haproxy-{tag}.cfg", config)]
    if tag == "handshake":
        # Like for like on the suite, which sets the cost of each handshake's key schedule:
        # HAProxy told to prefer what webstack prefers by default.
        config = haproxy_config(work, tls, SAME_SUITES)
        chosen["haproxy-aes128"] = ["haproxy", "-f", write(work, f"haproxy-{tag}-aes128.cfg", config)]
    return chosen


# What each scenario measures: the client, the path, and whether the proxy speaks TLS.
SCENARIOS = {
    # The headline figure (the target is set against it): its p99 is the noisiest on a shared
    # machine, so it takes the median of more runs.
    "proxy": {"name": "proxy", "tls": False, "path": "/", "client": "wrk", "runs": 5, "what": "3-server round robin, keep-alive"},
    "static": {"name": "static", "tls": False, "static": True, "path": "/16k.bin", "client": "wrk", "what": "a 16 KiB file from disk"},
    "tls": {"name": "tls", "tls": True, "path": "/", "client": "wrk", "what": "TLS 1.3 keep-alive, ECDSA P-256"},
    "handshake": {"name": "handshake", "tls": True, "path": "/", "client": "wrk-close", "what": "a new TLS connection per request"},
    "h2": {"name": "h2", "tls": True, "path": "/", "client": "h2load", "what": "HTTP/2 over TLS, 10 streams per connection"},
    "tls-origin": {"name": "tls-origin", "tls": False, "origin_tls": True, "path": "/", "client": "wrk", "conns": [64],
                   "what": "plain HTTP in, HTTPS to the origins (verified), keep-alive"},
}


def busy_cpu_share(seconds=1.0):
    """The share of the machine's CPU time used over `seconds` (both cores)."""

    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def wait_until_quiet(limit=0.05, tries=10):
    """Other processes using the machine make runs 5-15% low: wait for a quiet moment."""
    for _ in range(tries):
        share = busy_cpu_share()
        if share <= limit:
            return share
        print(f"  machine busy ({share:.0%} CPU in use); waiting", file=sys.stderr)
    return share


def measure_once(cmd, scenario, conns, seconds):
    wait_until_quiet()
    proc = start(cmd, 1)
    try:
        try:
            wait_listening(PROXY)
        except SystemExit:
            stop(proc)
            raise SystemExit(f"{cmd[0]} did not start: {proc.stderr.read().decode(errors='replace')}")
        load(scenario, conns, 2)  # warm-up: connections, pools, caches
        pids = pids_of(proc.pid)
        cpu_before = cpu_seconds(pids)
        r = load(scenario, conns, seconds)
        r["cpu_us"] = (cpu_seconds(pids) - cpu_before) / max(r["requests"], 1) * 1e6
        r["rss"] = peak_rss_mib(pids_of(proc.pid))
        return r
    finally:
        stop(proc)


def prepare_files(work, webstack):
    """The 16 KiB file, and one ECDSA P-256 certificate every proxy serves."""
    os.makedirs(os.path.join(work, "www"), exist_ok=True)
    os.chmod(os.path.join(work, "www"), 0o755)
    with open(os.path.join(work, "www", "16k.bin"), "wb") as f:
        f.write(bytes(range(256)) * 64)
    certs = os.path.join(work, "certs-state")
    topology = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "webstack.toml")
    subprocess.run([webstack, "cert", "--topology", topology, "--state-dir", certs], check=True, capture_output=True)
    for name in ("site.pem", "site-key.pem", "ca.pem"):
        shutil.copy(os.path.join(certs, "certs", name), os.path.join(work, name))
    with open(os.path.join(work, "haproxy.pem"), "w") as out:
        for name in ("site.pem", "site-key.pem"):
            with open(os.path.join(work, name)) as f:
                out.write(f.read())
    for name in os.listdir(work):
        os.chmod(os.path.join(work, name), 0o755 if os.path.isdir(os.path.join(work, name)) else 0o644)


def median_of(results):
    median = {k: statistics.median(r[k] for r in results) for k in ("rps", "p50", "p99", "cpu_us", "rss")}
    median["errors"] = sum(r["errors"] for r in results)
    median["socket_errors"] = "; ".join(r["socket_errors"] for r in results if r["socket_errors"])
    return median


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, help="runs per figure (default: 3, and 5 for the plain proxy)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", default="64,256")
    ap.add_argument("--webstack", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "webstack"))
    ap.add_argument("--only", default="webstack,haproxy,nginx,haproxy-aes128")
    ap.add_argument("--scenarios", default="proxy,static,tls,handshake,h2,tls-origin", help="comma-separated: " + ", ".join(SCENARIOS))
    args = ap.parse_args()
    for tool in ("wrk", "haproxy", "nginx", "taskset", "h2load"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} not found; run scripts/setup --bench")
    os.environ["PATH"] += ":/usr/sbin"
    # nginx workers may run as nobody: the work dir must be readable by them.
    work = tempfile.mkdtemp(prefix="webstack-bench-")
    os.chmod(work, 0o755)
    # The origins' HTTPS servers use the certificate made here.
    prepare_files(work, args.webstack)
    origin = start(["nginx", "-c", write(work, "origin.conf", origin_config(work)), "-e", os.path.join(work, "origin-e.log")], 0)
    try:
        for o in ORIGINS + TLS_ORIGINS:
            wait_listening(o)
        table = []
        for scenario in [SCENARIOS[s.strip()] for s in args.scenarios.split(",")]:
            chosen = {n: c for n, c in proxies(work, args.webstack, scenario).items() if n in args.only.split(",")}
            # The reference: HAProxy, or nginx where HAProxy has no part (files from disk).
            reference = "haproxy" if "haproxy" in chosen else "nginx"
            wanted = [int(c) for c in args.conns.split(",")]
            for conns in [c for c in wanted if c in scenario.get("conns", wanted)]:
                # Runs interleave the proxies, so a noisy minute hurts each of them alike.
                results = {name: [] for name in chosen}
                for run in range(args.runs or scenario.get("runs", 3)):
                    for name, cmd in chosen.items():
                        results[name].append(measure_once(cmd, scenario, conns, args.seconds))
                        print(f"  {scenario['name']} run {run + 1}: {name} at {conns} connections", file=sys.stderr)
                figures = {name: median_of(rs) for name, rs in results.items()}
                base = figures.get(reference)
                for name, f in figures.items():
                    ratio = lambda k, f=f, base=base: f[k] / base[k] if base and base[k] else float("nan")
                    table.append((scenario, reference, name, conns, f, ratio))
        print(f"\n{'scenario':<10} {'proxy':<14} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'µs/req':>7} {'RSS MiB':>8}   vs {'ref':<7} {'req/s':>6} {'p99':>6} {'µs/req':>6} {'errors':>6}")
        for scenario, reference, name, conns, f, ratio in table:
            print(
                f"{scenario['name']:<10} {name:<14} {conns:>5} {f['rps']:>9,.0f} {f['p50']:>7.2f} {f['p99']:>7.2f} {f['cpu_us']:>7.2f} {f['rss']:>8.1f}"
                f"   vs {reference:<7} {ratio('rps'):>6.2f} {ratio('p99'):>6.2f} {ratio('cpu_us'):>6.2f} {f['errors']:>6}"
                + (f"  socket errors: {f['socket_errors']}" if f["socket_errors"] else "")
            )
    finally:
        stop(origin)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
