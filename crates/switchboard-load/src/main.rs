//! `switchboard-load`: the project's measuring instrument. Plays both
//! sides of Switchboard over real gRPC (simulated agents and an open-loop
//! gateway), and measures the two ceilings the dispatcher is quoted
//! against: a bare tonic echo server with the same load shape, and Redis
//! running a claim script.
//!
//! Exit codes: 0 the run held every invariant, 1 an invariant broke (a
//! conversation lost, an agent over capacity, an ineligible offer), 2 the
//! run could not be done (bad arguments, server unreachable, ...).

mod agents;
mod client;
mod cpu_probe;
mod echo;
mod gateway;
mod ledger;
mod metrics;
mod procstat;
mod profile;
mod progress;
mod realtime;
mod redis_ceiling;
mod redis_stats;
mod report;
mod run;
mod schedule;
mod sender;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

/// jemalloc, as the server uses: glibc's malloc and free were ~8% of the
/// tool's CPU samples at 1,000 hand-offs/s, on the core the tool shares
/// with Redis. The echo server (`echo-server`, this binary) then runs on
/// the same allocator as the server it is the ceiling of.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "switchboard-load", version, about)]
struct Cli {
    /// Tokio worker threads (default: the CPUs this process may use, so
    /// `taskset -c 1` gives one).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulated agents and an open-loop gateway against a running server.
    Run(Box<run::RunArgs>),
    /// The bare tonic echo ceiling at one or more rates.
    Echo(echo::EchoArgs),
    /// Serve the echo service (started by `echo` and `run --compare-echo`).
    EchoServer(echo::EchoServerArgs),
    /// redis-benchmark with a claim-like EVALSHA script against a Redis.
    RedisCeiling(redis_ceiling::RedisArgs),
    /// Time the CPU probe's fixed work here and print the median, ms
    /// (started by `run` under taskset on each CPU).
    #[command(hide = true)]
    CpuProbe,
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("cannot encode the report as JSON")?
    );
    Ok(())
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let json = args.json;
            let report = run::run(*args).await?;
            if json {
                print_json(&report)?;
            } else {
                report::print_run(&report);
            }
            Ok(if report.invariants.total() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Echo(args) => {
            let json = args.json;
            let report = echo::run(args).await?;
            if json {
                print_json(&report)?;
            } else {
                report::print_echo(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::EchoServer(args) => {
            echo::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CpuProbe => {
            println!("{:.3}", cpu_probe::measure());
            Ok(ExitCode::SUCCESS)
        }
        Command::RedisCeiling(args) => {
            let report = redis_ceiling::run(&args)?;
            if args.json {
                print_json(&report)?;
            } else {
                report::print_redis(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard-load: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("switchboard-load: {error:#}");
            ExitCode::from(2)
        }
    }
}
