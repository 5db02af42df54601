//! Resident memory and CPU time of a local process, read from `/proc`, so a
//! run reports what the server cost while it served.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
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
    let (_, cpu_ticks) = parse_stat(&stat)?;
    Some(Sample {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:").unwrap_or(0),
        cpu_ticks,
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
/// This program (`switchboard-load`) as a child process, pinned to `cpu`
/// with taskset when one is given; the caller adds the subcommand.
pub fn this_program_on(cpu: Option<usize>) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    Ok(match cpu {
        Some(cpu) => {
            let mut command = tokio::process::Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(&exe);
            command
        }
        None => tokio::process::Command::new(&exe),
    })
}

/// A finished child's stdout, or an error naming `what` failed with its
/// stderr.
pub fn stdout_of(output: &std::process::Output, what: &str) -> anyhow::Result<String> {
    if !output.status.success() {
        anyhow::bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The numbers of the CPUs `/proc/stat` lists (`cpu0`, `cpu1`, … ; not
/// the first line, which sums them); empty where it cannot be read.
pub fn cpu_ids() -> Vec<usize> {
    std::fs::read_to_string("/proc/stat")
        .map(|stat| parse_cpu_ids(&stat))
        .unwrap_or_default()
}

fn parse_cpu_ids(stat: &str) -> Vec<usize> {
    stat.lines()
        .filter_map(|line| {
            line.split_whitespace()
                .next()?
                .strip_prefix("cpu")?
                .parse()
                .ok()
        })
        .collect()
}

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

/// Other processes' CPU beyond which a run or step is invalid, percent of
/// one core: the machine was not the server's, the tool's and Redis's
/// alone (a build, another benchmark). The machine's own daemons use ~2%.
pub const MAX_OTHER_CPU_PERCENT: f64 = 10.0;

/// CPU time of every process on the machine at one moment, by pid.
#[derive(Clone, Debug)]
pub struct Census {
    processes: HashMap<u32, Process>,
    at: Instant,
}

#[derive(Clone, Debug)]
struct Process {
    name: String,
    ticks: u64,
    /// The program it runs (`/proc/<pid>/exe`; None for kernel threads).
    exe: Option<PathBuf>,
}

/// The processes a run measures: by pid, and every process running one of
/// `programs` (a second replica and its tool, in a two-replica run).
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub pids: Vec<u32>,
    pub programs: Vec<PathBuf>,
}

impl Census {
    /// The program process `pid` ran when counted.
    pub fn program(&self, pid: u32) -> Option<PathBuf> {
        self.processes.get(&pid)?.exe.clone()
    }
}

/// Reads `/proc/<pid>/stat` of every process. None when `/proc` cannot be
/// listed (not Linux).
pub fn census() -> Option<Census> {
    let mut processes = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // Gone between the listing and the read: nothing to count.
        if let Some((name, ticks)) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
        {
            let exe = std::fs::read_link(entry.path().join("exe")).ok();
            processes.insert(pid, Process { name, ticks, exe });
        }
    }
    Some(Census {
        processes,
        at: Instant::now(),
    })
}

/// The command name and user + system ticks of a `/proc/<pid>/stat` line.
/// The name may hold spaces and parentheses: fields start after the last
/// ')'. utime and stime are fields 14 and 15 of the line, so the 12th and
/// 13th after the name.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((name, user + system))
}

/// One process's share of a window.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub name: String,
    pub cpu_percent: f64,
}

/// CPU used over a window by processes other than the measured ones.
#[derive(Clone, Debug, Serialize)]
pub struct OtherProcesses {
    /// Percent of one core, all of them together.
    pub cpu_percent: f64,
    /// The busiest few, busiest first.
    pub busiest: Vec<ProcessCpu>,
}

impl OtherProcesses {
    /// Over [`MAX_OTHER_CPU_PERCENT`]: the run is invalid.
    pub fn is_excessive(&self) -> bool {
        self.cpu_percent > MAX_OTHER_CPU_PERCENT
    }
}

/// "name (pid) N%" for the busiest other processes.
pub fn describe_busiest(others: &OtherProcesses) -> String {
    let each: Vec<String> = others
        .busiest
        .iter()
        .map(|p| format!("{} ({}) {:.1}%", p.name, p.pid, p.cpu_percent))
        .collect();
    if each.is_empty() {
        "none".to_owned()
    } else {
        each.join(", ")
    }
}

/// What every process but the measured ones used between two censuses. A
/// process started in between counts from zero; one that ended is not
/// seen.
pub fn other_processes(
    before: &Census,
    after: &Census,
    measured: &Measured,
    ticks_per_second: f64,
) -> OtherProcesses {
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    let percent = |ticks: u64| {
        if wall <= 0.0 {
            0.0
        } else {
            100.0 * ticks as f64 / ticks_per_second / wall
        }
    };
    let mut busiest: Vec<ProcessCpu> = after
        .processes
        .iter()
        .filter(|(pid, process)| {
            !measured.pids.contains(pid)
                && !process
                    .exe
                    .as_ref()
                    .is_some_and(|exe| measured.programs.contains(exe))
        })
        .filter_map(|(pid, process)| {
            let was = before.processes.get(pid).map_or(0, |was| was.ticks);
            let used = process.ticks.saturating_sub(was);
            (used > 0).then(|| ProcessCpu {
                pid: *pid,
                name: process.name.clone(),
                cpu_percent: percent(used),
            })
        })
        .collect();
    busiest.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
    let cpu_percent = busiest.iter().map(|p| p.cpu_percent).sum();
    busiest.truncate(5);
    OtherProcesses {
        cpu_percent,
        busiest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_gives_its_stdout_or_fails_with_its_stderr() {
        let run = |script: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .unwrap()
        };
        assert_eq!(stdout_of(&run("echo out"), "sh").unwrap(), "out\n");
        let error = stdout_of(&run("echo out; echo oops >&2; exit 3"), "the thing").unwrap_err();
        assert_eq!(error.to_string(), "the thing failed: oops");
    }

    #[test]
    fn cpu_ids_are_the_numbered_lines() {
        let stat = "cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 5 0 2 50 0 0 0 0 0 0\ncpu3 5 0 3 50 0 0 0 0 0 0\nintr 1 2\nctxt 99\n";
        assert_eq!(parse_cpu_ids(stat), [0, 3]);
        assert!(parse_cpu_ids("").is_empty());
    }

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
    fn census_of(processes: &[(u32, &str, u64)], at: Instant) -> Census {
        Census {
            processes: processes
                .iter()
                .map(|(pid, name, ticks)| {
                    let process = Process {
                        name: (*name).to_owned(),
                        ticks: *ticks,
                        exe: Some(PathBuf::from(format!("/usr/bin/{name}"))),
                    };
                    (*pid, process)
                })
                .collect(),
            at,
        }
    }

    fn pids(pids: &[u32]) -> Measured {
        Measured {
            pids: pids.to_vec(),
            programs: Vec::new(),
        }
    }

    #[test]
    fn other_processes_leave_out_ours_and_count_newcomers_from_zero() {
        let start = Instant::now();
        let before = census_of(
            &[(1, "init", 10), (7, "server", 100), (9, "rustc", 50)],
            start,
        );
        let after = census_of(
            &[
                (1, "init", 11),
                (7, "server", 900),
                (9, "rustc", 450),
                (12, "cc1", 30),
            ],
            start + std::time::Duration::from_secs(4),
        );
        let others = other_processes(&before, &after, &pids(&[7]), 100.0);
        // rustc 400 ticks, cc1 30, init 1 over 4 s at 100 ticks a second.
        assert!((others.cpu_percent - 107.75).abs() < 1e-9, "{others:?}");
        let names: Vec<&str> = others.busiest.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["rustc", "cc1", "init"]);
        assert!((others.busiest[0].cpu_percent - 100.0).abs() < 1e-9);
        assert!(others.is_excessive());
        assert_eq!(
            describe_busiest(&others),
            "rustc (9) 100.0%, cc1 (12) 7.5%, init (1) 0.2%"
        );

        let quiet = other_processes(
            &before,
            &census_of(&[(1, "init", 14)], after.at),
            &pids(&[]),
            100.0,
        );
        assert!((quiet.cpu_percent - 1.0).abs() < 1e-9, "{quiet:?}");
        assert!(!quiet.is_excessive());
        let none = other_processes(&before, &before, &pids(&[]), 100.0);
        assert_eq!(describe_busiest(&none), "none");
    }

    #[test]
    fn stat_lines_give_name_and_ticks_even_with_parentheses_in_the_name() {
        let line =
            "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_stat(line), Some(("tokio (rt) w".to_owned(), 42)));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn this_machine_can_be_counted() {
        let first = census().expect("/proc is readable on Linux");
        let me = std::process::id();
        assert!(
            first.processes.contains_key(&me),
            "the census sees this test"
        );
        let program = first.program(me).expect("this test's own program");
        let second = census().unwrap();
        let others = other_processes(&first, &second, &pids(&[me]), ticks_per_second());
        assert!(others.cpu_percent >= 0.0);
        assert!(others.busiest.iter().all(|p| p.pid != me));
        let by_program = Measured {
            pids: Vec::new(),
            programs: vec![program],
        };
        let others = other_processes(&first, &second, &by_program, ticks_per_second());
        assert!(others.busiest.iter().all(|p| p.pid != me));
    }

    #[test]
    fn copies_of_the_measured_programs_are_measured_too() {
        let start = Instant::now();
        // Two replicas and two tools; the second pair is known only by its
        // programs. The machine's own Redis is another process.
        let before = census_of(
            &[
                (10, "switchboard", 0),
                (11, "switchboard", 0),
                (20, "redis-server", 0),
            ],
            start,
        );
        let after = census_of(
            &[
                (10, "switchboard", 300),
                (11, "switchboard", 280),
                (20, "redis-server", 4),
            ],
            start + std::time::Duration::from_secs(10),
        );
        let measured = Measured {
            pids: vec![10],
            programs: vec![PathBuf::from("/usr/bin/switchboard")],
        };
        let others = other_processes(&before, &after, &measured, 100.0);
        let names: Vec<&str> = others.busiest.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["redis-server"]);
        assert!((others.cpu_percent - 0.4).abs() < 1e-9, "{others:?}");
    }
}
