//! `switchboard-load redis-ceiling`: what one Redis on this machine does
//! with a claim-shaped script (EVALSHA), measured with the stock
//! `redis-benchmark`, so a Redis-backed dispatcher can be quoted as a
//! fraction of it.
//!
//! The script is `claim.lua` beside this file, a stand-in with the Redis
//! work of one offer (pop the longest-idle agent, record the offer, append
//! to the event feed, put the agent back): a fixed, small piece of Redis
//! work. `run --compare-redis` measures it against the run's own Redis
//! after the run, and quotes Redis's work per hand-off in claim calls
//! ([`RedisComparison`]), as issue 6 asks: the dispatcher as a ratio of
//! what this machine's Redis can do. The ratio does not divide out the
//! machine's slow minutes: on 5 Dec 2026 the claim's cost hardly moved
//! while a hand-off's rose by a third, because the slowdown hits the
//! three busy processes side by side and the benchmark runs with the
//! server idle (docs/performance.md; the CPU probe reads the host).

use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::metrics::ratio;
use crate::redis_stats::{self, RedisUsage};

const CLAIM_SCRIPT: &str = include_str!("claim.lua");
const SEED_SCRIPT: &str = "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) \
for i = 1, tonumber(ARGV[1]) do redis.call('ZADD', KEYS[1], i, 'agent-' .. i) end return 1";
const KEYS: [&str; 3] = [
    "loadbench:{pool}:avail:en:billing",
    "loadbench:{pool}:offers",
    "loadbench:{pool}:events",
];

#[derive(clap::Args, Clone, Debug)]
pub struct RedisArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 6379)]
    pub port: u16,
    /// Script calls in total.
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Calls pipelined per connection (1 = one round trip each, like the
    /// dispatcher).
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// Agents in the available set.
    #[arg(long, default_value_t = 10_000)]
    pub agents: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RedisReport {
    pub script_sha: String,
    pub command: String,
    pub requests: u64,
    pub clients: u32,
    pub pipeline: u32,
    pub calls_per_sec: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn redis_cli(args: &RedisArgs, command: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .arg("-h")
        .arg(&args.host)
        .arg("-p")
        .arg(args.port.to_string())
        .args(command)
        .output()
        .context("cannot run redis-cli (is it installed?)")?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || text.starts_with("ERR") || text.contains("Could not connect") {
        bail!(
            "redis-cli {} failed: {text} {}",
            command.first().unwrap_or(&""),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(text)
}

/// The host and port of a TCP Redis URL (what redis-cli and
/// redis-benchmark take).
pub fn target(url: &str) -> anyhow::Result<(String, u16)> {
    let client = redis::Client::open(url).with_context(|| format!("bad --redis-url `{url}`"))?;
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => Ok((host.clone(), *port)),
        other => {
            bail!("--compare-redis needs a plain TCP Redis (redis://host:port), not {other:?}")
        }
    }
}

/// What `run --compare-redis` needs, checked before the run: a TCP Redis
/// URL and both programs.
pub fn preflight(url: &str) -> anyhow::Result<()> {
    target(url)?;
    for program in ["redis-cli", "redis-benchmark"] {
        let runs = Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        if !runs {
            bail!("cannot run `{program} --version` (Debian's redis-tools has it)");
        }
    }
    Ok(())
}

/// The run's Redis against its own claim ceiling (`run --compare-redis`).
#[derive(Clone, Debug, Serialize)]
pub struct RedisComparison {
    /// redis-benchmark's result, 50 clients, one call per round trip.
    pub ceiling: RedisReport,
    /// Redis's own time per claim call while the benchmark ran
    /// (`INFO commandstats`, evalsha), µs.
    pub claim_micros_per_call: f64,
    /// Redis's own time in dispatch calls per requested hand-off in the
    /// run (round trips per hand-off × µs per round trip), µs.
    pub handoff_micros: f64,
    /// `handoff_micros ÷ claim_micros_per_call`: one hand-off costs Redis
    /// as much as this many claim calls (measured minutes apart: see the
    /// module docs).
    pub claim_calls_per_handoff: f64,
    /// Hand-offs completed per second in the run ÷ the ceiling's claim
    /// calls per second.
    pub throughput_ratio: f64,
}

impl RedisComparison {
    pub fn new(
        ceiling: RedisReport,
        claim_micros_per_call: f64,
        usage: &RedisUsage,
        completed_per_sec: f64,
    ) -> Self {
        let handoff_micros = usage.round_trips_per_handoff * usage.micros_per_round_trip;
        RedisComparison {
            claim_micros_per_call,
            handoff_micros,
            claim_calls_per_handoff: ratio(handoff_micros, claim_micros_per_call),
            throughput_ratio: ratio(completed_per_sec, ceiling.calls_per_sec),
            ceiling,
        }
    }
}

/// The claim ceiling of the Redis at `url`, `calls` calls long, with
/// Redis's own time per claim call from its counters around it.
pub async fn compare(url: &str, calls: u64) -> anyhow::Result<(RedisReport, f64)> {
    let (host, port) = target(url)?;
    let args = RedisArgs {
        host,
        port,
        requests: calls,
        clients: 50,
        pipeline: 1,
        agents: 10_000,
        json: false,
    };
    let before = redis_stats::sample(url).await?;
    let report = tokio::task::spawn_blocking(move || run(&args))
        .await
        .context("the redis-benchmark task failed")??;
    let after = redis_stats::sample(url).await?;
    let micros = redis_stats::micros_per_call(&before, &after, "evalsha")
        .context("Redis counted no EVALSHA during redis-benchmark's run")?;
    Ok((report, micros))
}

pub fn run(args: &RedisArgs) -> anyhow::Result<RedisReport> {
    let agents = args.agents.to_string();
    redis_cli(
        args,
        &["EVAL", SEED_SCRIPT, "3", KEYS[0], KEYS[1], KEYS[2], &agents],
    )?;
    let sha = redis_cli(args, &["SCRIPT", "LOAD", CLAIM_SCRIPT])?;
    if sha.len() != 40 {
        bail!("SCRIPT LOAD answered `{sha}`, not a SHA1");
    }
    let benchmark_args: Vec<String> = [
        "-h",
        &args.host,
        "-p",
        &args.port.to_string(),
        "-n",
        &args.requests.to_string(),
        "-c",
        &args.clients.to_string(),
        "-P",
        &args.pipeline.to_string(),
        "-r",
        "100000000",
        "--csv",
        "EVALSHA",
        &sha,
        "3",
        KEYS[0],
        KEYS[1],
        KEYS[2],
        "conv-__rand_int__",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let output = Command::new("redis-benchmark")
        .args(&benchmark_args)
        .output()
        .context("cannot run redis-benchmark (is it installed?)")?;
    let text = crate::procstat::stdout_of(&output, "redis-benchmark")?;
    let row = text
        .lines()
        .filter(|line| !line.starts_with("\"test\""))
        .find(|line| line.starts_with('"'))
        .with_context(|| format!("no result line in redis-benchmark's output: {text}"))?;
    let numbers: Vec<f64> = row
        .split(',')
        .skip(1)
        .filter_map(|field| field.trim_matches('"').parse().ok())
        .collect();
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
    // "p95_latency_ms","p99_latency_ms","max_latency_ms"
    let [calls_per_sec, avg_ms, _min, p50_ms, _p95, p99_ms, max_ms] = numbers[..] else {
        bail!("unexpected redis-benchmark CSV row: {row}");
    };
    Ok(RedisReport {
        script_sha: sha,
        command: format!("redis-benchmark {}", benchmark_args.join(" ")),
        requests: args.requests,
        clients: args.clients,
        pipeline: args.pipeline,
        calls_per_sec,
        avg_ms,
        p50_ms,
        p99_ms,
        max_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling(calls_per_sec: f64) -> RedisReport {
        RedisReport {
            script_sha: "0".repeat(40),
            command: "redis-benchmark".to_owned(),
            requests: 1000,
            clients: 50,
            pipeline: 1,
            calls_per_sec,
            avg_ms: 1.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
        }
    }

    #[test]
    fn tcp_urls_give_host_and_port_and_others_are_refused() {
        assert_eq!(
            target("redis://127.0.0.1:16399/").unwrap(),
            ("127.0.0.1".to_owned(), 16399)
        );
        assert_eq!(
            target("redis://localhost").unwrap(),
            ("localhost".to_owned(), 6379)
        );
        let error = target("redis+unix:///tmp/redis.sock").unwrap_err();
        assert!(error.to_string().contains("--compare-redis"), "{error}");
        assert!(target("not a url").is_err());
        // The preflight refuses what `target` refuses.
        assert!(preflight("redis+unix:///tmp/redis.sock").is_err());
    }

    #[test]
    fn a_hand_off_is_quoted_in_claim_calls() {
        let usage = RedisUsage {
            round_trips_per_handoff: 4.0,
            micros_per_round_trip: 100.0,
            cpu_percent: 40.0,
            cpu_micros_per_handoff: 500.0,
            commands: Vec::new(),
        };
        let comparison = RedisComparison::new(ceiling(50_000.0), 20.0, &usage, 1_000.0);
        assert!((comparison.handoff_micros - 400.0).abs() < 1e-9);
        assert!((comparison.claim_calls_per_handoff - 20.0).abs() < 1e-9);
        assert!((comparison.throughput_ratio - 0.02).abs() < 1e-12);
        // Nothing measured gives zero, not infinity.
        let empty = RedisComparison::new(ceiling(0.0), 0.0, &usage, 1_000.0);
        assert_eq!(empty.claim_calls_per_handoff, 0.0);
        assert_eq!(empty.throughput_ratio, 0.0);
    }
}
