//! The readable end-of-run tables (the same data `--json` prints).

use comfy_table::Table;

use crate::echo::{EchoReport, EchoStep};
use crate::metrics::{LatencySummary, OfferWindows, Series};
use crate::redis_ceiling::RedisReport;
use crate::run::{MAX_SCHEDULE_LAG_P99_MS, RunReport};

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.set_header(header.to_vec());
    table
}

fn latency_row(name: &str, latency: &LatencySummary) -> Vec<String> {
    vec![
        name.to_owned(),
        latency.count.to_string(),
        format!("{:.3}", latency.p50_ms),
        format!("{:.3}", latency.p90_ms),
        format!("{:.3}", latency.p99_ms),
        format!("{:.3}", latency.p999_ms),
        format!("{:.3}", latency.max_ms),
    ]
}

const LATENCY_HEADER: [&str; 7] = ["ms", "count", "p50", "p90", "p99", "p99.9", "max"];

/// One line: how the slow requests are spread over the run.
fn print_offer_windows(windows: &OfferWindows) {
    let mut line = format!(
        "request → offer over {} ms: in {} of {} windows of {} ms",
        windows.slow_over_ms, windows.with_slow, windows.windows, windows.window_ms
    );
    if !windows.worst.is_empty() {
        let worst: Vec<String> = windows
            .worst
            .iter()
            .map(|w| {
                format!(
                    "+{:.1} s: {} of {} (max {:.1} ms)",
                    w.at_secs, w.slow, w.requests, w.max_ms
                )
            })
            .collect();
        line.push_str("; worst: ");
        line.push_str(&worst.join(", "));
    }
    println!("{line}");
}

pub fn print_run(report: &RunReport) {
    let verdict = if report.valid { "VALID" } else { "INVALID" };
    println!(
        "hand-off load against {}: {} agents ({} per connection, online after {:.1} s), {:.0}/s for {:.0} s (+{:.0} s warm-up): {verdict}",
        report.server,
        report.agents,
        report.agents_per_connection,
        report.agents_online_after_secs,
        report.throughput.target_rate,
        report.duration_secs,
        report.warmup_secs,
    );
    for reason in &report.invalid_reasons {
        println!("  invalid: {reason}");
    }
    if report.realtime_senders {
        println!(
            "  arrival schedule and gateway sender at real-time priority (--realtime-senders)"
        );
    }
    let throughput = &report.throughput;
    let totals = &report.totals;
    let mut counts = table(&[
        "throughput (measured window)",
        "per second",
        "total (whole run)",
    ]);
    let rows = [
        ("requested", throughput.requested_per_sec, totals.requested),
        ("offers", throughput.offers_per_sec, totals.offered),
        ("assigned", throughput.assigned_per_sec, totals.assigned),
        (
            "hand-offs completed",
            throughput.completed_per_sec,
            totals.handoffs_completed,
        ),
        ("unary calls (all)", throughput.unary_calls_per_sec, 0),
    ];
    for (name, rate, total) in rows {
        counts.add_row(vec![
            name.to_owned(),
            format!("{rate:.1}"),
            total.to_string(),
        ]);
    }
    for (name, total) in [
        ("cancelled", totals.cancelled),
        ("declined", totals.declined),
        ("missed", totals.missed),
        ("churned offline", totals.churned_offline),
        ("errors", totals.errors),
    ] {
        counts.add_row(vec![name.to_owned(), String::new(), total.to_string()]);
    }
    println!("{counts}");

    let mut latencies = table(&LATENCY_HEADER);
    for series in Series::ALL {
        latencies.add_row(latency_row(series.name(), &report.metrics.latency(series)));
    }
    for (method, latency) in &report.metrics.rpcs {
        latencies.add_row(latency_row(&format!("rpc {method}"), latency));
    }
    println!("{latencies}");
    print_offer_windows(&report.metrics.offer_windows);

    if let Some(echo) = &report.echo {
        let mut comparison = table(&["vs bare tonic echo, same rate", "p50 ms", "p99 ms"]);
        let offer = report.metrics.latency(Series::RequestToOffer);
        comparison.add_row(vec![
            "request → offer".to_owned(),
            format!("{:.3}", offer.p50_ms),
            format!("{:.3}", offer.p99_ms),
        ]);
        comparison.add_row(vec![
            "echo call → push".to_owned(),
            format!("{:.3}", echo.echo.push.p50_ms),
            format!("{:.3}", echo.echo.push.p99_ms),
        ]);
        comparison.add_row(vec![
            "ratio".to_owned(),
            format!("{:.2}", echo.offer_p50_ratio),
            format!("{:.2}", echo.offer_p99_ratio),
        ]);
        println!("{comparison}");
    }

    if !report.metrics.errors.is_empty() || !report.metrics.expected_refusals.is_empty() {
        let mut errors = table(&["call and status", "errors", "provoked (cancel, teardown)"]);
        let mut keys: Vec<&String> = report
            .metrics
            .errors
            .keys()
            .chain(report.metrics.expected_refusals.keys())
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            errors.add_row(vec![
                key.clone(),
                report
                    .metrics
                    .errors
                    .get(key)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                report
                    .metrics
                    .expected_refusals
                    .get(key)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]);
        }
        println!("{errors}");
        for example in &report.metrics.error_examples {
            println!("  e.g. {example}");
        }
    }

    let settlement = &report.settlement;
    println!(
        "conversations: {} requested, {} assigned, {} cancelled, {} refused, {} unservable, {} still waiting",
        settlement.requested,
        settlement.assigned,
        settlement.cancelled,
        settlement.failed_requests,
        settlement.unservable,
        settlement.outstanding
    );
    if let Some(server) = &report.server_resources {
        println!(
            "server pid {}: RSS {:.1} MiB with agents online ({:.1} KiB per agent), {:.1} MiB at the end (peak {:.1} MiB), CPU {:.0}% of a core during the load",
            server.pid,
            server.rss_agents_online_mib,
            server.rss_per_agent_kib,
            server.rss_end_mib,
            server.peak_rss_mib,
            server.cpu_percent_during_load
        );
    }
    println!("load tool CPU: {:.0}% of a core", report.tool_cpu_percent);
    if let Some(steal) = &report.host_steal {
        let each: Vec<String> = steal
            .per_cpu_percent
            .iter()
            .enumerate()
            .map(|(cpu, percent)| format!("cpu{cpu} {percent:.1}%"))
            .collect();
        println!(
            "host CPU steal (time the hypervisor gave to other guests): {:.1}% ({})",
            steal.percent,
            each.join(", ")
        );
    }
    if let Some(others) = &report.other_processes {
        println!(
            "other processes on this machine: {:.1}% of a core (busiest: {})",
            others.cpu_percent,
            crate::procstat::describe_busiest(others)
        );
    }
    if !report.cpu_probe.is_empty() {
        let each: Vec<String> = report
            .cpu_probe
            .iter()
            .map(|r| format!("cpu{} {:.1} / {:.1} ms", r.cpu, r.before_ms, r.after_ms))
            .collect();
        println!(
            "CPU probe (fixed work on each CPU, median of {}; before the load / after the agents went offline): {}",
            crate::cpu_probe::REPETITIONS,
            each.join(", ")
        );
    }
    if let Some(problem) = &report.cpu_probe_error {
        println!("CPU probe: not measured ({problem})");
    }
    if let Some(redis) = &report.redis {
        println!(
            "redis: {:.2} round trips (FCALL/EVALSHA) per requested hand-off, {:.1} µs of Redis per round trip, Redis CPU {:.0}% of a core ({:.0} µs per hand-off)",
            redis.round_trips_per_handoff,
            redis.micros_per_round_trip,
            redis.cpu_percent,
            redis.cpu_micros_per_handoff
        );
        let mut commands = table(&[
            "redis command (incl. inside calls)",
            "per hand-off",
            "µs per call",
        ]);
        for c in redis.commands.iter().take(12) {
            commands.add_row(vec![
                c.command.clone(),
                format!("{:.2}", c.calls_per_handoff),
                format!("{:.1}", c.micros_per_call),
            ]);
        }
        println!("{commands}");
    }
    if let Some(comparison) = &report.redis_ceiling {
        println!(
            "redis claim ceiling (redis-benchmark EVALSHA, {} clients, after the run): {:.0} calls/s, {:.1} µs of Redis per call",
            comparison.ceiling.clients,
            comparison.ceiling.calls_per_sec,
            comparison.claim_micros_per_call
        );
        println!(
            "a hand-off costs Redis {:.0} µs in dispatch calls = {:.1} claim calls; hand-offs completed/s ÷ claim calls/s = {:.3}",
            comparison.handoff_micros,
            comparison.claim_calls_per_handoff,
            comparison.throughput_ratio
        );
    }
    if let Some(problem) = &report.redis_ceiling_error {
        println!("redis claim ceiling: not measured ({problem})");
    }
    let invariants = &report.invariants;
    if invariants.total() == 0 {
        println!(
            "invariants: held (no conversation lost, no agent over capacity, no ineligible offer)"
        );
    } else {
        println!(
            "INVARIANTS BROKEN: {} lost conversations, {} over capacity, {} ineligible offers",
            invariants.lost_conversations, invariants.over_capacity, invariants.ineligible_offers
        );
        for example in &invariants.examples {
            println!("  {example}");
        }
    }
}

fn echo_row(step: &EchoStep) -> Vec<String> {
    vec![
        format!("{:.0}", step.target_rate),
        format!("{:.0}", step.achieved_calls_per_sec),
        format!("{:.3}", step.push.p50_ms),
        format!("{:.3}", step.push.p99_ms),
        format!("{:.3}", step.call.p99_ms),
        format!("{:.3}", step.schedule_lag.p99_ms),
        step.errors.to_string(),
        if step.schedule_lag.p99_ms > MAX_SCHEDULE_LAG_P99_MS {
            "INVALID (lag)".to_owned()
        } else if !step.valid {
            "INVALID (steal)".to_owned()
        } else if step.within_ceiling {
            "yes".to_owned()
        } else {
            "no".to_owned()
        },
    ]
}

pub fn print_echo(report: &EchoReport) {
    let mut steps = table(&[
        "target/s",
        "achieved/s",
        "push p50 ms",
        "push p99 ms",
        "call p99 ms",
        "lag p99 ms",
        "errors",
        "within ceiling",
    ]);
    for step in &report.steps {
        steps.add_row(echo_row(step));
    }
    println!("{steps}");
    match report.ceiling_calls_per_sec {
        Some(ceiling) => println!("echo ceiling: {ceiling:.0} calls/s (push p99 ≤ 50 ms)"),
        None => println!("echo ceiling: no rate tried stayed within push p99 ≤ 50 ms"),
    }
    if report.realtime_senders {
        println!("arrival schedule and callers' sender at real-time priority (--realtime-senders)");
    }
}

pub fn print_redis(report: &RedisReport) {
    let mut result = table(&[
        "EVALSHA claim",
        "calls/s",
        "avg ms",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]);
    result.add_row(vec![
        format!("{} clients, pipeline {}", report.clients, report.pipeline),
        format!("{:.0}", report.calls_per_sec),
        format!("{:.3}", report.avg_ms),
        format!("{:.3}", report.p50_ms),
        format!("{:.3}", report.p99_ms),
        format!("{:.3}", report.max_ms),
    ]);
    println!("{}", report.command);
    println!("{result}");
}
