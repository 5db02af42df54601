//! What the Redis behind the server did during the measured window, from
//! `INFO commandstats` and `INFO cpu` sampled at its start and end: the
//! round trips a hand-off costs (dispatch calls per requested hand-off),
//! Redis's own time per call, and how busy its one thread was.
//!
//! `commandstats` counts the commands a script or function runs as well as
//! the ones clients send, so the dispatch calls (`fcall`, `evalsha`) are
//! the round trips; the rest are reported as "inside the calls or from the
//! event feed" per hand-off, for reading, not as round trips.

use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;

/// The commands that are one client round trip each (the dispatch calls).
const DISPATCH_COMMANDS: [&str; 2] = ["fcall", "evalsha"];

/// One reading of a Redis's counters.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Command → (calls, microseconds).
    commands: BTreeMap<String, (u64, u64)>,
    /// `used_cpu_sys + used_cpu_user`, seconds.
    cpu_seconds: f64,
    /// Redis's `process_id` (a local Redis is one of the measured
    /// processes, not another process on the machine).
    pub pid: Option<u32>,
}

/// One command's share of the window.
#[derive(Clone, Debug, Serialize)]
pub struct CommandUsage {
    pub command: String,
    pub calls_per_handoff: f64,
    pub micros_per_call: f64,
}

/// What Redis did during the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct RedisUsage {
    /// FCALL (or EVALSHA) calls per requested hand-off: the client round
    /// trips on the common path.
    pub round_trips_per_handoff: f64,
    /// Redis's own time per dispatch call (commandstats), µs.
    pub micros_per_round_trip: f64,
    /// Redis's CPU (user + system) over the window, percent of one core.
    pub cpu_percent: f64,
    /// Redis's CPU over the window per requested hand-off, µs (everything
    /// it did: calls, the event feed's reads, its network I/O).
    pub cpu_micros_per_handoff: f64,
    /// Every command seen, most time first.
    pub commands: Vec<CommandUsage>,
}

/// Reads the counters of the Redis at `url`.
pub async fn sample(url: &str) -> anyhow::Result<Sample> {
    let client = redis::Client::open(url).with_context(|| format!("bad --redis-url `{url}`"))?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot reach Redis at {url}"))?;
    // Redis 7 answers several sections in one call (the library needs 7).
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("cpu")
        .arg("server")
        .query_async(&mut connection)
        .await
        .context("INFO commandstats cpu server")?;
    Ok(Sample {
        pid: info_field(&info, "process_id").and_then(|pid| pid.parse().ok()),
        ..parse(&info, &info)
    })
}

/// One `name:value` line of an INFO section.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.trim().split_once(':')?;
        (name == field).then_some(value)
    })
}

fn parse(commandstats: &str, cpu: &str) -> Sample {
    let commands = commandstats
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let mut calls = None;
            let mut usec = None;
            for field in stats.split(',') {
                if let Some(v) = field.strip_prefix("calls=") {
                    calls = v.parse().ok();
                } else if let Some(v) = field.strip_prefix("usec=") {
                    usec = v.parse().ok();
                }
            }
            Some((name.to_owned(), (calls?, usec?)))
        })
        .collect();
    let cpu_seconds = ["used_cpu_sys", "used_cpu_user"]
        .into_iter()
        .filter_map(|field| info_field(cpu, field)?.parse::<f64>().ok())
        .sum();
    Sample {
        commands,
        cpu_seconds,
        pid: None,
    }
}

/// The window between `start` and `end`, `requested` hand-offs long.
pub fn usage(start: &Sample, end: &Sample, window_secs: f64, requested: u64) -> RedisUsage {
    let per_handoff = |calls: u64| calls as f64 / requested.max(1) as f64;
    let mut commands: Vec<(CommandUsage, u64)> = end
        .commands
        .keys()
        .filter_map(|name| {
            let (calls, usec) = delta(start, end, name)?;
            (calls > 0).then(|| {
                (
                    CommandUsage {
                        command: name.clone(),
                        calls_per_handoff: per_handoff(calls),
                        micros_per_call: usec as f64 / calls as f64,
                    },
                    usec,
                )
            })
        })
        .collect();
    commands.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.command.cmp(&b.0.command)));
    let (dispatch_calls, dispatch_usec) = commands
        .iter()
        .filter(|(c, _)| DISPATCH_COMMANDS.contains(&c.command.as_str()))
        .fold((0.0, 0u64), |(calls, usec), (c, u)| {
            (calls + c.calls_per_handoff, usec + u)
        });
    let dispatch_count = dispatch_calls * requested.max(1) as f64;
    let cpu_seconds = (end.cpu_seconds - start.cpu_seconds).max(0.0);
    RedisUsage {
        round_trips_per_handoff: dispatch_calls,
        micros_per_round_trip: if dispatch_count > 0.0 {
            dispatch_usec as f64 / dispatch_count
        } else {
            0.0
        },
        cpu_percent: 100.0 * cpu_seconds / window_secs.max(1e-3),
        cpu_micros_per_handoff: 1e6 * cpu_seconds / requested.max(1) as f64,
        commands: commands.into_iter().map(|(c, _)| c).collect(),
    }
}

/// Calls of `command` and Redis's microseconds in them between two
/// samples (a command new since `start` counts from zero); None if `end`
/// never saw it.
fn delta(start: &Sample, end: &Sample, command: &str) -> Option<(u64, u64)> {
    let (calls, usec) = end.commands.get(command)?;
    let (calls0, usec0) = start.commands.get(command).copied().unwrap_or((0, 0));
    Some((calls.saturating_sub(calls0), usec.saturating_sub(usec0)))
}

/// Redis's own time per call of `command` between two samples, µs (None
/// if it was not called).
pub fn micros_per_call(start: &Sample, end: &Sample, command: &str) -> Option<f64> {
    let (calls, usec) = delta(start, end, command)?;
    (calls > 0).then(|| usec as f64 / calls as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS_A: &str = "# Commandstats\r\ncmdstat_fcall:calls=100,usec=5000,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\ncmdstat_zadd:calls=400,usec=800,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n";
    const STATS_B: &str = "# Commandstats\r\ncmdstat_fcall:calls=700,usec=41000,usec_per_call=58.57,rejected_calls=0,failed_calls=0\r\ncmdstat_zadd:calls=2800,usec=5600,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\ncmdstat_xread:calls=10,usec=100,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let server =
            "# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\nprocess_supervised:no\r\n";
        assert_eq!(info_field(server, "process_id"), Some("4242"));
        assert_eq!(info_field(server, "process"), None);
        assert_eq!(info_field("", "process_id"), None);
    }

    #[test]
    fn the_window_is_the_difference_of_two_samples() {
        let start = parse(STATS_A, "used_cpu_sys:1.5\r\nused_cpu_user:2.5\r\n");
        let end = parse(STATS_B, "used_cpu_sys:2.0\r\nused_cpu_user:4.0\r\n");
        let usage = usage(&start, &end, 10.0, 100);
        assert!((usage.round_trips_per_handoff - 6.0).abs() < 1e-9);
        assert!((usage.micros_per_round_trip - 60.0).abs() < 1e-9);
        assert!((usage.cpu_percent - 20.0).abs() < 1e-9);
        assert!((usage.cpu_micros_per_handoff - 20_000.0).abs() < 1e-6);
        let names: Vec<&str> = usage.commands.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(names, ["fcall", "zadd", "xread"], "most time first");
        assert!((usage.commands[1].calls_per_handoff - 24.0).abs() < 1e-9);
    }

    #[test]
    fn time_per_call_is_of_one_command_between_two_samples() {
        let start = parse(STATS_A, "");
        let end = parse(STATS_B, "");
        assert_eq!(micros_per_call(&start, &end, "fcall"), Some(60.0));
        // New since the start: counted from zero.
        assert_eq!(micros_per_call(&start, &end, "xread"), Some(10.0));
        assert_eq!(micros_per_call(&start, &end, "evalsha"), None);
        assert_eq!(
            micros_per_call(&end, &end, "fcall"),
            None,
            "no calls between"
        );
    }
}
