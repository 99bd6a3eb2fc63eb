//! Process metrics in Prometheus text, read from `/proc/self` at scrape time (Linux; elsewhere
//! nothing is rendered), with the standard names client libraries use (`process_*`), and the
//! binaries' build-info gauge. A few file reads per scrape: no crate, no background task.

use std::fmt::Write as _;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 on every Linux ABI
/// the binaries are built for (it is fixed at 100 for x86, arm and riscv user space).
const TICKS_PER_SEC: u64 = 100;

/// What `/proc` says about this process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sample {
    pub cpu_ticks: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// Unix seconds.
    pub start_time: Option<u64>,
}

/// Fields of `/proc/self/stat` after the command name, which may itself hold spaces and parens.
fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// Reads a sample of this process.
pub fn sample() -> Sample {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields = stat_fields(&stat);
    // Field numbers of proc(5) minus 3 (the list starts at field 3, `state`).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_ticks = field(14).zip(field(15)).map(|(u, s)| u + s);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let start_time = boot
        .zip(field(22))
        .map(|(b, ticks)| b + ticks / TICKS_PER_SEC);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .and_then(|d| u64::try_from(d.count()).ok());
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u64>().ok())
        });
    Sample {
        cpu_ticks,
        resident_bytes: kib("VmRSS:"),
        virtual_bytes: kib("VmSize:"),
        open_fds,
        max_fds,
        start_time,
    }
}

/// Appends the process metrics of [`sample`] to `out`.
pub fn render(out: &mut String) {
    render_sample(out, &sample());
}

fn render_sample(out: &mut String, s: &Sample) {
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        s.cpu_ticks
            .map(|t| format!("{}.{:02}", t / TICKS_PER_SEC, t % TICKS_PER_SEC)),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.resident_bytes.map(|v| v.to_string()),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        s.virtual_bytes.map(|v| v.to_string()),
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        s.open_fds.map(|v| v.to_string()),
    );
    metric(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors (the soft limit).",
        s.max_fds.map(|v| v.to_string()),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the unix epoch in seconds.",
        s.start_time.map(|v| v.to_string()),
    );
}

/// Appends `<metric>{version="...",commit="..."} 1` (the commit label only when known).
pub fn render_build_info(out: &mut String, metric: &str, version: &str, commit: Option<&str>) {
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let labels = match commit.filter(|c| !c.is_empty()) {
        Some(c) => format!("version=\"{}\",commit=\"{}\"", esc(version), esc(c)),
        None => format!("version=\"{}\"", esc(version)),
    };
    let _ = writeln!(
        out,
        "# HELP {metric} The running build: version, and the commit when it was built with TOLLGATE_GIT_COMMIT set.\n# TYPE {metric} gauge\n{metric}{{{labels}}} 1"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let line = "42 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 125 0 0 20 0 1 0 9000 1000 50";
        let f = stat_fields(line);
        assert_eq!(f.first(), Some(&"S"));
        assert_eq!(f.get(14 - 3), Some(&"250"));
        assert_eq!(f.get(22 - 3), Some(&"9000"));
    }

    #[test]
    fn this_process_is_measured() {
        let s = sample();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(s.resident_bytes.unwrap_or(0) > 0, "{s:?}");
            assert!(s.open_fds.unwrap_or(0) >= 3, "{s:?}");
            assert!(s.cpu_ticks.is_some(), "{s:?}");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let start = s.start_time.unwrap_or(0);
            assert!(
                start <= now + 1 && start + 86_400 * 365 > now,
                "{start} vs {now}"
            );
        }
        let mut out = String::new();
        render_sample(
            &mut out,
            &Sample {
                cpu_ticks: Some(1234),
                resident_bytes: Some(4096),
                ..Sample::default()
            },
        );
        assert!(out.contains("process_cpu_seconds_total 12.34\n"), "{out}");
        assert!(
            out.contains("process_resident_memory_bytes 4096\n"),
            "{out}"
        );
        assert!(!out.contains("process_open_fds"), "{out}");
    }

    #[test]
    fn build_info_has_a_commit_only_when_known() {
        let mut out = String::new();
        render_build_info(&mut out, "x_build_info", "1.2.3", None);
        assert!(
            out.ends_with("x_build_info{version=\"1.2.3\"} 1\n"),
            "{out}"
        );
        let mut out = String::new();
        render_build_info(&mut out, "x_build_info", "1.2.3", Some("abc"));
        assert!(
            out.contains("x_build_info{version=\"1.2.3\",commit=\"abc\"} 1"),
            "{out}"
        );
    }
}
