//! Resident memory and CPU time of a local process, read from `/proc`, so a
//! run reports what the server cost while it served.

use std::time::Instant;

use serde::Serialize;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    cpu_ticks: u64,
    at: Instant,
}

/// `pid` is a number or `self`. None when the process is gone or this is
/// not Linux.
pub fn sample(pid: &str) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15 of the line, so
    // the 12th and 13th after the name.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(Sample {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:").unwrap_or(0),
        cpu_ticks: user + system,
        at: Instant::now(),
    })
}

/// Clock ticks per second for `/proc/*/stat` times (`getconf CLK_TCK`; the
/// workspace forbids the unsafe `sysconf` call, and 100 is Linux's value
/// everywhere that matters).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// CPU used between two samples, as a percentage of one core.
pub fn cpu_percent(before: &Sample, after: &Sample, ticks_per_second: f64) -> f64 {
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    let cpu = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks_per_second;
    100.0 * cpu / wall
}

/// What the report says about a process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Resources {
    pub pid: String,
    /// RSS once every agent was online with its stream, before the load.
    pub rss_agents_online_mib: f64,
    pub rss_per_agent_kib: f64,
    /// RSS and peak RSS at the end of the load.
    pub rss_end_mib: f64,
    pub peak_rss_mib: f64,
    /// CPU during the load, percent of one core.
    pub cpu_percent_during_load: f64,
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let Some(first) = sample("self") else {
            return; // not Linux
        };
        assert!(first.rss_kib > 0);
        let mut spin = 0u64;
        for index in 0..2_000_000u64 {
            spin = spin.wrapping_add(index * index);
        }
        std::hint::black_box(spin);
        if let Some(second) = sample("self") {
            assert!(cpu_percent(&first, &second, ticks_per_second()) >= 0.0);
        }
    }
}
