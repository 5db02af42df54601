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

/// CPU time of the whole machine at one moment: the `cpu` lines of
/// `/proc/stat`, all CPUs first, then each CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSample {
    cpus: Vec<CpuTimes>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuTimes {
    /// user + nice + system + idle + iowait + irq + softirq + steal (guest
    /// time is already counted in user).
    total: u64,
    /// Time the hypervisor ran something else while this CPU had work.
    steal: u64,
}

/// None when `/proc/stat` cannot be read (not Linux).
pub fn host_sample() -> Option<HostSample> {
    parse_host(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_host(stat: &str) -> Option<HostSample> {
    let cpus: Vec<CpuTimes> = stat
        .lines()
        .filter(|line| line.starts_with("cpu"))
        .filter_map(|line| {
            let times: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|field| field.parse().ok())
                .collect::<Option<_>>()?;
            // Kernels before 2.6.11 have no steal column: nothing to say.
            (times.len() == 8).then(|| CpuTimes {
                total: times.iter().sum(),
                steal: times[7],
            })
        })
        .collect();
    (!cpus.is_empty()).then_some(HostSample { cpus })
}

/// How much of the machine's CPU time the hypervisor gave to others
/// (steal) between two samples. On a shared virtual machine this is time
/// the server, Redis and the tool were ready to run and could not: a run
/// with much of it measured the host's neighbours, not the dispatcher.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostSteal {
    /// Percent of all CPUs' time.
    pub percent: f64,
    /// Percent of each CPU's time, in CPU order.
    pub per_cpu_percent: Vec<f64>,
}

/// A run during which the hypervisor took more than this share of the
/// machine's CPU time (steal) measured the host's other guests, not the
/// server: it is reported as invalid.
pub const MAX_STEAL_PERCENT: f64 = 5.0;

impl HostSteal {
    /// Over [`MAX_STEAL_PERCENT`]: the run or step is invalid.
    pub fn is_excessive(&self) -> bool {
        self.percent > MAX_STEAL_PERCENT
    }
}

pub fn host_steal(before: &HostSample, after: &HostSample) -> Option<HostSteal> {
    if before.cpus.len() != after.cpus.len() {
        return None; // a CPU came or went
    }
    let percents: Vec<f64> = before
        .cpus
        .iter()
        .zip(&after.cpus)
        .map(|(was, is)| {
            let total = is.total.saturating_sub(was.total);
            let steal = is.steal.saturating_sub(was.steal);
            if total == 0 {
                0.0
            } else {
                100.0 * steal as f64 / total as f64
            }
        })
        .collect();
    let (all, each) = percents.split_first()?;
    Some(HostSteal {
        percent: *all,
        per_cpu_percent: each.to_vec(),
    })
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_BEFORE: &str = "cpu  100 0 50 800 10 0 20 20 5 0\n\
cpu0 50 0 25 400 5 0 10 10 5 0\n\
cpu1 50 0 25 400 5 0 10 10 0 0\n\
intr 12345 1 2\n";
    const STAT_AFTER: &str = "cpu  200 0 100 1400 10 0 40 250 9 0\n\
cpu0 150 0 50 700 5 0 20 75 9 0\n\
cpu1 50 0 50 700 5 0 20 175 0 0\n";

    #[test]
    fn steal_is_a_share_of_each_cpus_time() {
        let before = parse_host(STAT_BEFORE).unwrap();
        let after = parse_host(STAT_AFTER).unwrap();
        let steal = host_steal(&before, &after).unwrap();
        // All CPUs: 230 of 1000 ticks; cpu0 65 of 500; cpu1 165 of 500.
        assert!((steal.percent - 23.0).abs() < 1e-9, "{steal:?}");
        assert_eq!(steal.per_cpu_percent.len(), 2);
        assert!((steal.per_cpu_percent[0] - 13.0).abs() < 1e-9, "{steal:?}");
        assert!((steal.per_cpu_percent[1] - 33.0).abs() < 1e-9, "{steal:?}");
    }

    #[test]
    fn steal_needs_the_same_cpus_and_a_steal_column() {
        let two = parse_host(STAT_BEFORE).unwrap();
        let one = parse_host("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\n").unwrap();
        assert!(host_steal(&two, &one).is_none());
        assert!(parse_host("cpu  1 2 3 4\n").is_none());
        assert!(parse_host("intr 1 2 3\n").is_none());
        let same = host_steal(&two, &two).unwrap();
        assert_eq!(same.percent, 0.0);
    }

    #[test]
    fn reads_this_host() {
        let Some(first) = host_sample() else {
            return; // not Linux
        };
        let second = host_sample().unwrap();
        let steal = host_steal(&first, &second).unwrap();
        assert!(steal.percent >= 0.0 && steal.percent <= 100.0);
        assert!(!steal.per_cpu_percent.is_empty());
    }

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
