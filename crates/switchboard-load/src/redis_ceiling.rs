//! `switchboard-load redis-ceiling`: what one Redis on this machine does
//! with a claim-shaped script (EVALSHA), measured with the stock
//! `redis-benchmark`, so a Redis-backed dispatcher can be quoted as a
//! fraction of it.
//!
//! The script is `claim.lua` beside this file, a stand-in with the Redis
//! work of one offer (pop the longest-idle agent, record the offer, append
//! to the event feed, put the agent back). The Redis store's own
//! `dispatch.lua` takes JSON hand-offs and many settings per call; driving
//! it from redis-benchmark is left for when the Redis store is wired.

use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;

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
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
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
