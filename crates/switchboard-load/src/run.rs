//! `switchboard-load run`: the hand-off load against a running server.
//! Brings the agents online, runs the open-loop gateway for the duration,
//! waits for the work to drain, checks the invariants and reports.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use switchboard_auth::Role;
use switchboard_proto::v1::agent_service_client::AgentServiceClient;
use switchboard_proto::v1::gateway_service_client::GatewayServiceClient;
use switchboard_proto::v1::{ConversationState, GetConversationRequest};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agents::SimulatedAgent;
use crate::client::{Authorized, TokenMint, connect_many};
use crate::echo::{self, EchoStep};
use crate::ledger::{Ledger, Settlement, Violations};
use crate::metrics::{Counters, Metrics, MetricsSummary, Series};
use crate::procstat::{self, Resources, mib};
use crate::profile::{CATEGORIES, LANGUAGES, Profile, Requirement};
use crate::progress::Progress;
use crate::schedule;
use crate::sender::SenderRuntime;

/// A run whose generator lagged more than this at p99 measured the tool,
/// not the server: it is reported as invalid.
pub const MAX_SCHEDULE_LAG_P99_MS: f64 = 1.0;

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// The server's process id, to report its RSS and CPU from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[arg(long, default_value = "load")]
    pub pool: String,
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Agents sharing one HTTP/2 connection (1 = each its own, like apps).
    #[arg(long, default_value_t = 1)]
    pub agents_per_connection: usize,
    /// Connections the gateway spreads its calls over.
    #[arg(long, default_value_t = 2)]
    pub gateway_connections: usize,
    /// Hand-offs per second (Poisson arrivals).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long the gateway hands over (e.g. 60s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Leading part of the load left out of the histograms.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After the load, how long to wait for every conversation to be
    /// assigned before calling the rest lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    #[arg(long, default_value_t = 1)]
    pub capacity: u32,
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub think: Duration,
    /// Think time is uniform in think ± jitter.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub think_jitter: Duration,
    /// Mean of the exponential handle time.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub handle_mean: Duration,
    /// Heartbeat interval (default: what GoOnline answers, 10 s by default).
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Fraction of offers declined after the think time.
    #[arg(long, default_value_t = 0.02)]
    pub decline_fraction: f64,
    /// Fraction of offers left to time out (the server's offer timeout,
    /// 20 s by default, so only useful in long runs).
    #[arg(long, default_value_t = 0.0)]
    pub miss_fraction: f64,
    /// Fraction of hand-offs the gateway cancels soon after.
    #[arg(long, default_value_t = 0.02)]
    pub cancel_fraction: f64,
    /// A cancel comes uniformly within this long after the request.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub cancel_within: Duration,
    /// Fraction of agents going offline (when idle) per minute, each coming
    /// back after --offline-pause.
    #[arg(long, default_value_t = 0.02)]
    pub churn_per_minute: f64,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub offline_pause: Duration,
    /// Skills each agent has, of the 8 categories.
    #[arg(long, default_value_t = 4)]
    pub skills_per_agent: usize,
    /// Probability an agent also speaks each non-English language.
    #[arg(long, default_value_t = 0.3)]
    pub second_language: f64,
    /// Hand over English conversations only.
    #[arg(long)]
    pub english_only: bool,
    /// Fraction of conversations the gateway watches until assigned.
    #[arg(long, default_value_t = 0.02)]
    pub watch_fraction: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long agents may take to come online before the run gives up.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    pub online_timeout: Duration,
    /// Agents going online at the same time.
    #[arg(long, default_value_t = 64)]
    pub onboarding_parallelism: usize,
    /// Leave the agents online at the end (default: each goes offline).
    #[arg(long)]
    pub no_offline_at_end: bool,
    /// Key id of --token-secret (a server in `keys` mode); without both,
    /// tokens are signed with the development key.
    #[arg(long, env = "SWITCHBOARD_LOAD_TOKEN_KEY_ID", requires = "token_secret")]
    pub token_key_id: Option<String>,
    #[arg(long, env = "SWITCHBOARD_LOAD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// After the run, run the bare tonic echo ceiling at the same rate and
    /// number of streams, and quote each latency as a ratio to it.
    #[arg(long)]
    pub compare_echo: bool,
    /// Run the arrival schedule and the gateway's sending thread at
    /// real-time priority (SCHED_FIFO 1; needs root or CAP_SYS_NICE), so a
    /// due arrival preempts the tool's stream readers and whatever else
    /// shares the tool's core. The report says so.
    #[arg(long)]
    pub realtime_senders: bool,
    /// Pin the echo server of --compare-echo to this CPU (taskset).
    #[arg(long)]
    pub echo_server_cpu: Option<usize>,
    /// The Redis behind the server (`redis://host:port`): report the round
    /// trips per hand-off, Redis's time per call and its CPU over the
    /// measured window (INFO commandstats and cpu at its start and end).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// After the run, measure the same Redis's ceiling with the claim
    /// script (redis-benchmark, as the `redis-ceiling` command) and quote
    /// Redis's work per hand-off in claim calls. Needs --redis-url,
    /// redis-cli and redis-benchmark.
    #[arg(long, requires = "redis_url")]
    pub compare_redis: bool,
    /// Skip the CPU probe (fixed work timed on each CPU before the load and
    /// after the agents went offline): e.g. when several tools share a
    /// machine and one's probe could fall in another's window.
    #[arg(long)]
    pub no_cpu_probe: bool,
    /// Claim calls the --compare-redis benchmark makes.
    #[arg(long, default_value_t = 100_000)]
    pub compare_redis_calls: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Everything the agents and the gateway share during a run.
pub struct RunContext {
    pub metrics: Metrics,
    pub ledger: Ledger,
    pub profile: Profile,
    pub capacity: u32,
    pub heartbeat_every: Option<Duration>,
    pub churn_mean: Option<Duration>,
    pub offline_pause: Duration,
    pub offline_at_end: bool,
    pub agents_stop: CancellationToken,
    pub tracker: TaskTracker,
    /// Limits how many agents go online at once, so a 10k ramp does not
    /// open 10k calls in one burst.
    pub onboarding: Semaphore,
    pub seed: u64,
    pub watch_fraction: f64,
    measure_from: OnceLock<Instant>,
    /// Highest level any agent of the run has, per [category][language].
    best_level: Vec<Vec<u32>>,
}

impl RunContext {
    /// Whether a conversation sent at `intended` is past the warm-up.
    pub fn is_measured(&self, intended: Instant) -> bool {
        self.measure_from
            .get()
            .is_some_and(|from| intended >= *from)
    }

    /// Whether some agent of this run can serve it (if none can, waiting
    /// forever is the right answer and not a lost conversation).
    pub fn servable(&self, requirement: &Requirement) -> bool {
        self.best_level[requirement.category][requirement.language] >= requirement.min_level
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    pub target_rate: f64,
    pub requested_per_sec: f64,
    pub offers_per_sec: f64,
    pub assigned_per_sec: f64,
    pub completed_per_sec: f64,
    /// Unary calls (all methods) per second over the measured window.
    pub unary_calls_per_sec: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub requested: u64,
    pub offered: u64,
    pub assigned: u64,
    pub handoffs_completed: u64,
    pub cancelled: u64,
    pub declined: u64,
    pub missed: u64,
    pub churned_offline: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EchoComparison {
    pub echo: EchoStep,
    /// Hand-off request→offer p50 ÷ echo request→push p50 (same rate).
    pub offer_p50_ratio: f64,
    pub offer_p99_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
    pub server: String,
    pub agents: usize,
    pub agents_per_connection: usize,
    pub agents_online_after_secs: f64,
    /// The arrival schedule and the gateway's sender ran at real-time
    /// priority (`--realtime-senders`).
    pub realtime_senders: bool,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub throughput: Throughput,
    pub totals: Totals,
    pub settlement: Settlement,
    pub metrics: MetricsSummary,
    pub invariants: Violations,
    pub server_resources: Option<Resources>,
    /// The load tool's own CPU during the load, percent of one core.
    pub tool_cpu_percent: f64,
    /// CPU time the hypervisor gave to other guests over the measured
    /// window (None where `/proc/stat` cannot be read).
    pub host_steal: Option<procstat::HostSteal>,
    /// CPU used over the window by every process on this machine but the
    /// server, the tool and a local Redis (None where `/proc` cannot be
    /// read).
    pub other_processes: Option<procstat::OtherProcesses>,
    pub echo: Option<EchoComparison>,
    /// With --redis-url: what Redis did during the measured window.
    pub redis: Option<crate::redis_stats::RedisUsage>,
    /// A fixed piece of CPU work timed on each CPU before the load and
    /// after the agents went offline (`cpu_probe`), ms; empty if it could
    /// not run, with the reason in `cpu_probe_error`.
    pub cpu_probe: Vec<crate::cpu_probe::CpuReading>,
    pub cpu_probe_error: Option<String>,
    /// With --compare-redis: the same Redis's claim ceiling, measured
    /// after the run, and the run quoted against it; if it failed after
    /// the run, the reason in `redis_ceiling_error` (the run's own
    /// results stand).
    pub redis_ceiling: Option<crate::redis_ceiling::RedisComparison>,
    pub redis_ceiling_error: Option<String>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 10s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s or m"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn validate(args: &RunArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if args.agents == 0 {
        problems.push("--agents must be at least 1".to_owned());
    }
    if args.agents_per_connection == 0 || args.gateway_connections == 0 {
        problems.push(
            "--agents-per-connection and --gateway-connections must be at least 1".to_owned(),
        );
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        problems.push(format!("--rate {} must be a positive number", args.rate));
    }
    for (name, value) in [
        ("--decline-fraction", args.decline_fraction),
        ("--miss-fraction", args.miss_fraction),
        ("--cancel-fraction", args.cancel_fraction),
        ("--watch-fraction", args.watch_fraction),
        ("--second-language", args.second_language),
        ("--churn-per-minute", args.churn_per_minute),
    ] {
        if !(0.0..=1.0).contains(&value) {
            problems.push(format!("{name} {value} must be within 0..1"));
        }
    }
    if args.decline_fraction + args.miss_fraction > 1.0 {
        problems.push("--decline-fraction plus --miss-fraction exceeds 1".to_owned());
    }
    if args.capacity == 0 {
        problems.push("--capacity must be at least 1".to_owned());
    }
    if let (true, Some(url)) = (args.compare_redis, &args.redis_url) {
        // Before the load, so a long run is not lost to a missing tool.
        if let Err(problem) = crate::redis_ceiling::preflight(url) {
            problems.push(format!("--compare-redis: {problem:#}"));
        }
    }
    if !problems.is_empty() {
        bail!("invalid arguments: {}", problems.join("; "));
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<RunReport> {
    validate(&args)?;
    let profile = Profile {
        skills_per_agent: args.skills_per_agent,
        second_language_probability: args.second_language,
        english_only: args.english_only,
        think_time_mean: args.think,
        think_time_jitter: args.think_jitter,
        handle_time_mean: args.handle_mean,
        decline_fraction: args.decline_fraction,
        miss_fraction: args.miss_fraction,
        cancel_fraction: args.cancel_fraction,
        cancel_within: args.cancel_within,
    };
    let run_id = format!("load{}-{}", std::process::id(), args.seed);
    let lifetime = args.duration + args.drain + args.online_timeout + Duration::from_secs(3600);
    let secret = args.token_key_id.clone().zip(args.token_secret.clone());
    let mint = TokenMint::new(secret, args.pool.clone(), lifetime);

    let mut rng = StdRng::seed_from_u64(args.seed);
    let agent_profiles: Vec<_> = (0..args.agents).map(|_| profile.agent(&mut rng)).collect();
    let mut best_level = vec![vec![0u32; LANGUAGES.len()]; CATEGORIES.len()];
    for agent in &agent_profiles {
        for &(skill, level) in &agent.skills {
            for &language in &agent.languages {
                best_level[skill][language] = best_level[skill][language].max(level);
            }
        }
    }
    let context = Arc::new(RunContext {
        metrics: Metrics::default(),
        ledger: Ledger::new(run_id.clone(), expected_requests(&args)),
        profile,
        capacity: args.capacity,
        heartbeat_every: args.heartbeat,
        churn_mean: (args.churn_per_minute > 0.0)
            .then(|| Duration::from_secs_f64(60.0 / args.churn_per_minute)),
        offline_pause: args.offline_pause,
        offline_at_end: !args.no_offline_at_end,
        agents_stop: CancellationToken::new(),
        tracker: TaskTracker::new(),
        onboarding: Semaphore::new(args.onboarding_parallelism.max(1)),
        seed: args.seed,
        watch_fraction: args.watch_fraction,
        measure_from: OnceLock::new(),
        best_level,
    });
    let progress = Progress::new(!(args.quiet || args.json));

    // Agents: connect, then go online in the background.
    let agent_connections = args.agents.div_ceil(args.agents_per_connection);
    progress.phase(&format!("connecting {agent_connections} agent connections"));
    let agent_channels = connect_many(&args.server, agent_connections).await?;
    // The gateway sends from its own runtime (see `sender`).
    let senders = SenderRuntime::start("gateway", args.realtime_senders)?;
    let gateway_channels = senders
        .connect_many(&args.server, args.gateway_connections)
        .await?;
    let onboarding_started = Instant::now();
    for (index, agent_profile) in agent_profiles.into_iter().enumerate() {
        let id = format!("{run_id}-agent-{index}");
        let bearer = mint.bearer(Role::Agent, Some(&id))?;
        let channel = agent_channels[index / args.agents_per_connection].clone();
        let agent = SimulatedAgent {
            client: AgentServiceClient::with_interceptor(channel, bearer),
            id,
            profile: agent_profile,
            seed: args.seed.wrapping_mul(1_000_003).wrapping_add(index as u64),
        };
        context.tracker.spawn(agent.run(Arc::clone(&context)));
    }
    let wanted = args.agents as u64;
    let online_deadline = onboarding_started + args.online_timeout;
    loop {
        let online = Counters::get(&context.metrics.counters.agents_onboarded);
        progress.onboarding(online, wanted);
        if online >= wanted {
            break;
        }
        if Instant::now() > online_deadline {
            context.agents_stop.cancel();
            bail!(
                "only {online} of {wanted} agents came online within {:?} (errors: {:?})",
                args.online_timeout,
                context.metrics.summary().errors
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agents_online_after = onboarding_started.elapsed();
    let server_pid = args.server_pid.map(|pid| pid.to_string());
    // Let the last streams settle before reading the server's memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_idle = server_pid.as_deref().and_then(procstat::sample);
    let cpus = (!args.no_cpu_probe).then(procstat::cpu_ids);
    let probe_before = cpu_probe(cpus.as_deref(), &progress).await;

    // The open-loop gateway.
    let gateway_bearer = mint.bearer(Role::Gateway, None)?;
    let gateway_clients: Vec<_> = gateway_channels
        .into_iter()
        .map(|channel| GatewayServiceClient::with_interceptor(channel, gateway_bearer.clone()))
        .collect();
    let inspector = gateway_clients.first().cloned();
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + args.warmup;
    let _ = context.measure_from.set(measure_from);
    let gateway_stop = CancellationToken::new();
    let runtime = senders.handle().clone();
    let schedule_context = Arc::clone(&context);
    let schedule = schedule::poisson(
        args.rate,
        start,
        args.warmup + args.duration,
        args.seed,
        args.realtime_senders,
        gateway_stop.clone(),
        move |arrival| {
            let client = gateway_clients[arrival.sequence as usize % gateway_clients.len()].clone();
            let work = crate::gateway::hand_over(Arc::clone(&schedule_context), client, arrival);
            runtime.spawn(schedule_context.tracker.track_future(work));
        },
    )?;

    let mut window_start: Option<WindowStart> = None;
    let mut redis_start = None;
    let load_end = start + args.warmup + args.duration;
    progress.load_started(args.warmup + args.duration);
    while !schedule.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if window_start.is_none() && Instant::now() >= measure_from {
            window_start = Some(WindowStart {
                totals: totals(&context.metrics),
                calls: unary_calls(&context.metrics),
                server: server_pid.as_deref().and_then(procstat::sample),
                tool: procstat::sample("self"),
                host: procstat::host_sample(),
                census: procstat::census(),
            });
            if let Some(url) = &args.redis_url {
                redis_start = Some(crate::redis_stats::sample(url).await?);
            }
        }
        progress.load(start, &context.metrics);
    }
    let window_end_at = Instant::now().min(load_end).max(measure_from);
    let end_totals = totals(&context.metrics);
    let end_calls = unary_calls(&context.metrics);
    let server_end = server_pid.as_deref().and_then(procstat::sample);
    let self_end = procstat::sample("self");
    let host_end = procstat::host_sample();
    let census_end = procstat::census();
    let redis_end = match &args.redis_url {
        Some(url) => Some(crate::redis_stats::sample(url).await?),
        None => None,
    };
    let WindowStart {
        totals: start_totals,
        calls: start_calls,
        server: server_start,
        tool: self_start,
        host: host_start,
        census: census_start,
    } = window_start.unwrap_or(WindowStart {
        totals: Totals::default(),
        calls: 0,
        server: server_idle,
        tool: None,
        host: None,
        census: None,
    });

    // Drain: every conversation should find an agent.
    progress.phase("draining");
    let drain_deadline = Instant::now() + args.drain;
    while context.ledger.settlement().outstanding > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut invariants = context.ledger.finish();
    if let Some(client) = inspector {
        for example in describe_lost(client, context.ledger.lost_examples()).await {
            invariants.note(example);
        }
    }
    let settlement = context.ledger.settlement();
    context.agents_stop.cancel();
    progress.phase("agents going offline");
    context.tracker.close();
    if tokio::time::timeout(Duration::from_secs(30), context.tracker.wait())
        .await
        .is_err()
    {
        progress.phase("some agents did not finish within 30 s");
    }
    senders.stop().await;
    // The agents are offline: close their connections, so that the echo
    // comparison (as many connections again) fits in the open files the
    // run itself needed.
    drop(agent_channels);
    // With the agents offline the server is idle again: what the probe
    // reads now is the host.
    let probe_after = cpu_probe(cpus.as_deref(), &progress).await;
    let cpu_probe = match (probe_before, probe_after) {
        (Ok(before), Ok(after)) => Ok(crate::cpu_probe::pair(
            cpus.as_deref().unwrap_or_default(),
            &before,
            &after,
        )),
        (Err(problem), _) | (_, Err(problem)) => Err(format!("{problem:#}")),
    };
    progress.finish();

    let window = window_end_at
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-3);
    let per_sec = |end: u64, begin: u64| end.saturating_sub(begin) as f64 / window;
    let throughput = Throughput {
        target_rate: args.rate,
        requested_per_sec: per_sec(end_totals.requested, start_totals.requested),
        offers_per_sec: per_sec(end_totals.offered, start_totals.offered),
        assigned_per_sec: per_sec(end_totals.assigned, start_totals.assigned),
        completed_per_sec: per_sec(
            end_totals.handoffs_completed,
            start_totals.handoffs_completed,
        ),
        unary_calls_per_sec: per_sec(end_calls, start_calls),
    };
    let redis = match (&redis_start, &redis_end) {
        (Some(start), Some(end)) => Some(crate::redis_stats::usage(
            start,
            end,
            window,
            end_totals.requested.saturating_sub(start_totals.requested),
        )),
        _ => None,
    };
    let ticks = procstat::ticks_per_second();
    let server_resources = match (server_idle, server_end) {
        (Some(idle), Some(end)) => Some(Resources {
            pid: server_pid.clone().unwrap_or_default(),
            rss_agents_online_mib: mib(idle.rss_kib),
            rss_per_agent_kib: idle.rss_kib as f64 / args.agents as f64,
            rss_end_mib: mib(end.rss_kib),
            peak_rss_mib: mib(end.peak_rss_kib),
            cpu_percent_during_load: server_start
                .map(|start| procstat::cpu_percent(&start, &end, ticks))
                .unwrap_or(0.0),
        }),
        _ => None,
    };
    let tool_cpu_percent = match (self_start, self_end) {
        (Some(start), Some(end)) => procstat::cpu_percent(&start, &end, ticks),
        _ => 0.0,
    };
    let host_steal = host_start
        .zip(host_end)
        .and_then(|(start, end)| procstat::host_steal(&start, &end));
    let server_pid_number = server_pid.as_deref().and_then(|pid| pid.parse().ok());
    let other_processes = census_start.zip(census_end).map(|(start, end)| {
        // The tool and the server by pid and by program (other replicas and
        // their tools run the same programs); Redis by pid only.
        let tool_and_server: Vec<u32> = [Some(std::process::id()), server_pid_number]
            .into_iter()
            .flatten()
            .collect();
        let programs = tool_and_server
            .iter()
            .filter_map(|&pid| end.program(pid))
            .collect();
        let mut pids = tool_and_server;
        pids.extend(redis_end.as_ref().and_then(|redis| redis.pid));
        let measured = procstat::Measured { pids, programs };
        procstat::other_processes(&start, &end, &measured, ticks)
    });
    let metrics = context.metrics.summary();
    let mut invalid_reasons = Vec::new();
    let lag = metrics.latency(Series::ScheduleLag);
    if lag.p99_ms > MAX_SCHEDULE_LAG_P99_MS {
        invalid_reasons.push(format!(
            "generator schedule lag p99 {:.3} ms exceeds {MAX_SCHEDULE_LAG_P99_MS} ms: the tool, not the server, set the pace",
            lag.p99_ms
        ));
    }
    if let Some(steal) = host_steal.as_ref().filter(|steal| steal.is_excessive()) {
        invalid_reasons.push(format!(
            "the hypervisor gave {:.1}% of the CPUs' time to other guests (steal) over the measured window, over {}%: the host's neighbours, not the server, set the pace",
            steal.percent,
            procstat::MAX_STEAL_PERCENT
        ));
    }
    if let Some(others) = other_processes
        .as_ref()
        .filter(|others| others.is_excessive())
    {
        invalid_reasons.push(format!(
            "other processes on this machine used {:.0}% of a core over the measured window (busiest: {}), over {}%: they, not the server, set the pace",
            others.cpu_percent,
            procstat::describe_busiest(others),
            procstat::MAX_OTHER_CPU_PERCENT
        ));
    }
    let echo = if args.compare_echo {
        progress.phase("echo ceiling at the same rate");
        let shape = echo::StepShape {
            listeners: args.agents,
            per_connection: args.agents_per_connection,
            warmup: args.warmup,
            duration: args.duration,
            realtime: args.realtime_senders,
        };
        let step = echo::compare_at(args.rate, &shape, args.echo_server_cpu, args.seed).await?;
        let offer = metrics.latency(Series::RequestToOffer);
        Some(EchoComparison {
            offer_p50_ratio: crate::metrics::ratio(offer.p50_ms, step.push.p50_ms),
            offer_p99_ratio: crate::metrics::ratio(offer.p99_ms, step.push.p99_ms),
            echo: step,
        })
    } else {
        None
    };
    let (redis_ceiling, redis_ceiling_error) = match (&args.redis_url, &redis) {
        (Some(url), Some(usage)) if args.compare_redis => {
            progress.phase("redis claim ceiling");
            match crate::redis_ceiling::compare(url, args.compare_redis_calls).await {
                Ok((ceiling, claim_micros)) => (
                    Some(crate::redis_ceiling::RedisComparison::new(
                        ceiling,
                        claim_micros,
                        usage,
                        throughput.completed_per_sec,
                    )),
                    None,
                ),
                Err(problem) => (None, Some(format!("{problem:#}"))),
            }
        }
        _ => (None, None),
    };
    Ok(RunReport {
        valid: invalid_reasons.is_empty(),
        invalid_reasons,
        server: args.server.clone(),
        agents: args.agents,
        agents_per_connection: args.agents_per_connection,
        agents_online_after_secs: agents_online_after.as_secs_f64(),
        realtime_senders: args.realtime_senders,
        duration_secs: args.duration.as_secs_f64(),
        warmup_secs: args.warmup.as_secs_f64(),
        throughput,
        totals: end_totals_with_errors(&context.metrics),
        settlement,
        metrics,
        invariants,
        server_resources,
        tool_cpu_percent,
        host_steal,
        other_processes,
        echo,
        redis,
        redis_ceiling,
        redis_ceiling_error,
        cpu_probe_error: cpu_probe.as_ref().err().cloned(),
        cpu_probe: cpu_probe.unwrap_or_default(),
    })
}

/// The CPU probe on `cpus` (none with --no-cpu-probe).
async fn cpu_probe(cpus: Option<&[usize]>, progress: &Progress) -> anyhow::Result<Vec<f64>> {
    match cpus {
        None => Ok(Vec::new()),
        Some(cpus) => {
            progress.phase("CPU probe");
            crate::cpu_probe::read(cpus).await
        }
    }
}

/// What the measured window starts from.
struct WindowStart {
    totals: Totals,
    calls: u64,
    server: Option<procstat::Sample>,
    tool: Option<procstat::Sample>,
    host: Option<procstat::HostSample>,
    census: Option<procstat::Census>,
}

/// Requests a run makes, with room for the Poisson schedule to run over
/// (six standard deviations), so the ledger never grows mid-run.
fn expected_requests(args: &RunArgs) -> usize {
    let mean = args.rate * (args.warmup + args.duration).as_secs_f64();
    (mean + 6.0 * mean.sqrt()).ceil() as usize + 1024
}

fn totals(metrics: &Metrics) -> Totals {
    let counters = &metrics.counters;
    let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    Totals {
        requested: get(&counters.requested),
        offered: get(&counters.offered),
        assigned: get(&counters.assigned),
        handoffs_completed: get(&counters.completed),
        cancelled: get(&counters.cancelled),
        declined: get(&counters.declined),
        missed: get(&counters.missed),
        churned_offline: get(&counters.churned_offline),
        errors: get(&counters.errors),
    }
}

fn end_totals_with_errors(metrics: &Metrics) -> Totals {
    totals(metrics)
}

fn unary_calls(metrics: &Metrics) -> u64 {
    metrics
        .summary()
        .rpcs
        .iter()
        .filter(|(method, _)| !matches!(method.as_str(), "Subscribe" | "WatchConversation"))
        .map(|(_, latency)| latency.count)
        .sum()
}

/// What the server says became of each lost conversation (state, reason,
/// offer attempts, holder), asked before the agents go offline: the
/// difference between "the tool missed an event" and "the server never
/// placed it" is the first thing to know about a lost conversation.
async fn describe_lost(
    mut client: GatewayServiceClient<Authorized>,
    ids: Vec<String>,
) -> Vec<String> {
    let mut notes = Vec::with_capacity(ids.len());
    for id in ids {
        let request = GetConversationRequest {
            conversation_id: id.clone(),
        };
        let note = match client.get_conversation(request).await {
            Ok(answer) => match answer.into_inner().conversation {
                Some(c) => format!(
                    "{id} on the server: {:?}, reason {:?}, {} offer attempt(s), agent {:?}",
                    ConversationState::try_from(c.state).unwrap_or(ConversationState::Unspecified),
                    c.reason,
                    c.attempts,
                    c.agent_id
                ),
                None => format!("{id} on the server: no conversation in the answer"),
            },
            Err(status) => format!(
                "{id} on the server: GetConversation {:?}: {}",
                status.code(),
                status.message()
            ),
        };
        notes.push(note);
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
