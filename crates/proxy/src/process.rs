//! The proxy process itself, as an operator asks after it: which version runs, since when, with
//! which PID, what it costs (CPU, memory, file descriptors), and whether its last reload took.
//! HAProxy's `show info` and its exporter's `haproxy_process_*`; the `process_*` names are the
//! ones every Prometheus client library exports, so stock dashboards and alerts find them.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What this process has been through since it started.
#[derive(Debug)]
pub struct ProcessInfo {
    started: SystemTime,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_failed: AtomicBool,
    /// Unix seconds of the last config that took: the start, then each reload that took.
    config_loaded_unix: AtomicU64,
}

impl Default for ProcessInfo {
    fn default() -> Self {
        let started = SystemTime::now();
        ProcessInfo {
            started,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_failed: AtomicBool::new(false),
            config_loaded_unix: AtomicU64::new(unix_seconds(started)),
        }
    }
}

impl ProcessInfo {
    pub fn record_reload(&self, took: bool) {
        if took {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
            self.config_loaded_unix.store(unix_seconds(SystemTime::now()), Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.last_reload_failed.store(!took, Ordering::Relaxed);
    }

    pub fn uptime(&self) -> Duration {
        SystemTime::now().duration_since(self.started).unwrap_or_default()
    }

    /// `webstack proxy NAME — version V, pid P, up 0d 1h02m03s`: the first line of `/stats`.
    pub fn summary(&self, name: &str) -> String {
        let up = self.uptime().as_secs();
        format!(
            "webstack proxy {name} — version {}, pid {}, up {}d {}h{:02}m{:02}s",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            up / 86_400,
            up % 86_400 / 3600,
            up % 3600 / 60,
            up % 60
        )
    }

    /// `GET /api/info`.
    pub fn json(&self, name: &str) -> String {
        serde_json::json!({
            "name": name,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started_unix": unix_seconds(self.started),
            "uptime_seconds": self.uptime().as_secs(),
            "reloads": self.reloads_ok.load(Ordering::Relaxed),
            "reloads_failed": self.reloads_failed.load(Ordering::Relaxed),
            "last_reload_failed": self.last_reload_failed.load(Ordering::Relaxed),
        })
        .to_string()
    }

    /// The process's own lines of `/metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        let metric = |out: &mut String, kind: &str, name: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: f64| metric(out, "gauge", name, help, value);
        let _ = writeln!(
            out,
            "# HELP webstack_proxy_build_info The running version.\n# TYPE webstack_proxy_build_info gauge\n\
             webstack_proxy_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let started = self.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        gauge(out, "process_start_time_seconds", "Start time of the process since the Unix epoch.", started);
        if let Some(usage) = Usage::of_this_process() {
            metric(out, "counter", "process_cpu_seconds_total", "User and system CPU time spent.", usage.cpu_seconds);
            gauge(out, "process_resident_memory_bytes", "Resident memory size.", usage.resident_bytes as f64);
            gauge(out, "process_virtual_memory_bytes", "Virtual memory size.", usage.virtual_bytes as f64);
        }
        if let Some(open) = open_fds() {
            gauge(out, "process_open_fds", "Open file descriptors.", open as f64);
        }
        if let Some(max) = max_fds() {
            gauge(out, "process_max_fds", "The limit of open file descriptors.", max as f64);
        }
        let _ = writeln!(
            out,
            "# HELP webstack_proxy_reloads_total Config reloads (SIGHUP, POST /reload), by outcome.\n\
             # TYPE webstack_proxy_reloads_total counter\n\
             webstack_proxy_reloads_total{{result=\"ok\"}} {}\nwebstack_proxy_reloads_total{{result=\"failed\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
        let took = if self.last_reload_failed.load(Ordering::Relaxed) { 0.0 } else { 1.0 };
        gauge(
            out,
            "webstack_proxy_config_last_reload_successful",
            "Whether the last reload took (0: the file on disk is not the config that runs).",
            took,
        );
        gauge(
            out,
            "webstack_proxy_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded.",
            self.config_loaded_unix.load(Ordering::Relaxed) as f64,
        );
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// CPU and memory of this process, from `/proc/self/stat`.
#[derive(Debug, PartialEq)]
struct Usage {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
}

impl Usage {
    fn of_this_process() -> Option<Usage> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        Usage::parse(&stat, u64::try_from(ticks).ok()?, u64::try_from(page).ok()?)
    }

    /// Fields after the command name (which may hold spaces and parentheses): utime and stime
    /// are the 14th and 15th of the line, vsize and rss the 23rd and 24th (proc(5)).
    fn parse(stat: &str, ticks_per_second: u64, page_bytes: u64) -> Option<Usage> {
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = field(14)?.checked_add(field(15)?)?;
        Some(Usage {
            cpu_seconds: ticks as f64 / ticks_per_second.max(1) as f64,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)?.saturating_mul(page_bytes),
        })
    }
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_cpu_and_memory_even_with_a_command_name_in_parentheses() {
        let line = "4242 (web (stack) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 2 0 \
                    123 104857600 2560 18446744073709551615";
        let usage = Usage::parse(line, 100, 4096).expect("parsed");
        assert_eq!(usage, Usage { cpu_seconds: 3.0, resident_bytes: 2560 * 4096, virtual_bytes: 104_857_600 });
        assert_eq!(Usage::parse("4242 (x) S 1", 100, 4096), None);
    }

    #[test]
    fn the_metrics_name_the_version_and_the_process_as_prometheus_clients_do() {
        let info = ProcessInfo::default();
        let mut out = String::new();
        info.write_metrics(&mut out);
        assert!(out.contains(&format!("webstack_proxy_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
        for name in ["process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes"] {
            assert!(out.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} in:\n{out}");
        }
        let open: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_open_fds "))
            .and_then(|v| v.parse().ok())
            .expect("open fds");
        assert!(open >= 3.0, "stdin, stdout and stderr at least: {open}");
        assert!(out.contains("webstack_proxy_config_last_reload_successful 1"));
    }

    #[test]
    fn a_failed_reload_shows_until_one_takes() {
        let info = ProcessInfo::default();
        info.record_reload(false);
        let mut out = String::new();
        info.write_metrics(&mut out);
        assert!(out.contains("webstack_proxy_config_last_reload_successful 0"), "{out}");
        assert!(out.contains("webstack_proxy_reloads_total{result=\"failed\"} 1"), "{out}");
        info.record_reload(true);
        let mut out = String::new();
        info.write_metrics(&mut out);
        assert!(out.contains("webstack_proxy_config_last_reload_successful 1"), "{out}");
        assert!(out.contains("webstack_proxy_reloads_total{result=\"ok\"} 1"), "{out}");
        assert!(info
            .summary("lb-01")
            .starts_with(&format!("webstack proxy lb-01 — version {}, pid ", env!("CARGO_PKG_VERSION"))));
    }
}
