//! CI smoke run of the load tool: the real `switchboard` binary on a free
//! port, `switchboard-load run` against it for a few seconds with small
//! numbers, and the JSON report checked for completed hand-offs and held
//! invariants. The full measurements are manual (docs/performance.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `switchboard` server binary, built next to this test's deps folder
/// (`cargo build --bins` first; scripts/test does).
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("switchboard");
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first (scripts/test does)",
        path.display()
    );
    path
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the server (`serve` plus `extra`) and waits until it accepts TCP
/// connections.
fn start_server(extra: &[&str]) -> (Server, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(server_binary())
        .args(["serve", "--listen", &listen])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the switchboard server");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "server not listening on {listen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, format!("http://{listen}"))
}

/// A short run with small numbers against `url`, plus `extra`; returns the
/// JSON report after checking the exit code, completed hand-offs and the
/// invariants.
fn short_run(server: &Server, url: &str, extra: &[&str]) -> serde_json::Value {
    let tool = Command::new(env!("CARGO_BIN_EXE_switchboard-load"));
    short_run_of(tool, server, url, ["20", "5"], extra)
}

/// `short_run` with the tool started by `tool` (e.g. under a shell that
/// lowers its limits) and `[agents, agents per connection]`.
fn short_run_of(
    mut tool: Command,
    server: &Server,
    url: &str,
    [agents, per_connection]: [&str; 2],
    extra: &[&str],
) -> serde_json::Value {
    let output = tool
        .args([
            "run",
            "--server",
            url,
            "--server-pid",
            &server.0.id().to_string(),
            "--agents",
            agents,
            "--agents-per-connection",
            per_connection,
            "--rate",
            "20",
            "--duration",
            "3s",
            "--think",
            "50ms",
            "--think-jitter",
            "10ms",
            "--handle-mean",
            "300ms",
            "--drain",
            "10s",
            "--churn-per-minute",
            "0.2",
            "--offline-pause",
            "500ms",
            "--skills-per-agent",
            "8",
            "--english-only",
            "--watch-fraction",
            "0.2",
            "--json",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .output()
        .expect("run switchboard-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "switchboard-load exited with {:?}: {stderr}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("the report is not JSON ({error}): {stderr}"));
    let completed = report["totals"]["handoffs_completed"].as_u64().unwrap();
    assert!(completed > 0, "no hand-off completed: {report:#}");
    for violation in ["lost_conversations", "over_capacity", "ineligible_offers"] {
        assert_eq!(
            report["invariants"][violation].as_u64(),
            Some(0),
            "{violation}: {report:#}"
        );
    }
    assert!(
        report["metrics"]["latencies"]["request_to_offer"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Every measured request falls in some 100 ms window of the report.
    let windows = &report["metrics"]["offer_windows"];
    assert_eq!(windows["window_ms"].as_u64(), Some(100), "{report:#}");
    assert!(windows["windows"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        windows["with_slow"].as_u64().unwrap() <= windows["windows"].as_u64().unwrap(),
        "{report:#}"
    );
    // The hypervisor's share of the machine over the window (Linux only,
    // as the whole smoke test is).
    let steal = report["host_steal"]["percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&steal), "{report:#}");
    // The CPU probe ran on every CPU before the load and after the agents
    // went offline.
    assert!(report["cpu_probe_error"].is_null(), "{report:#}");
    let probe = report["cpu_probe"].as_array().unwrap();
    if !extra.contains(&"--no-cpu-probe") {
        assert!(!probe.is_empty(), "{report:#}");
    }
    for reading in probe {
        assert!(reading["cpu"].is_u64(), "{report:#}");
        assert!(reading["before_ms"].as_f64().unwrap() > 0.0, "{report:#}");
        assert!(reading["after_ms"].as_f64().unwrap() > 0.0, "{report:#}");
    }
    assert!(
        report["server_resources"]["rss_agents_online_mib"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    report
}

#[test]
fn a_short_run_completes_hand_offs_and_holds_the_invariants() {
    let (server, url) = start_server(&[]);
    let report = short_run(&server, &url, &[]);
    assert!(report["redis"].is_null(), "no --redis-url: {report:#}");
}

/// `--compare-echo` opens as many connections as the run's agents did: it
/// runs once they are closed, so a run that fits in its open-file limit
/// keeps fitting with the comparison (150 agents, each on its own
/// connection, under a limit of 256 open files; both at once would need
/// over 300).
#[test]
fn the_echo_comparison_fits_in_the_open_files_of_the_run() {
    let (server, url) = start_server(&[]);
    let mut tool = Command::new("bash");
    tool.args([
        "-c",
        r#"ulimit -n 256 && exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_switchboard-load"),
    ]);
    let report = short_run_of(tool, &server, &url, ["150", "1"], &["--compare-echo"]);
    let echo = &report["echo"];
    assert_eq!(echo["echo"]["listeners"].as_u64(), Some(150), "{report:#}");
    assert!(
        echo["echo"]["push"]["count"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(echo["echo"]["errors"].as_u64(), Some(0), "{report:#}");
    assert!(
        echo["offer_p99_ratio"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
}

/// The server on the Redis at `redis_url` and a short run with
/// `--compare-redis` (2,000 claim calls) against it.
async fn run_with_claim_ceiling(
    redis_url: String,
    extra: &'static [&'static str],
) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let (server, url) = start_server(&["--redis", &redis_url]);
        let mut args = vec![
            "--redis-url",
            &redis_url,
            "--compare-redis",
            "--compare-redis-calls",
            "2000",
        ];
        args.extend_from_slice(extra);
        short_run(&server, &url, &args)
    })
    .await
    .unwrap()
}

/// On the Redis store (the harness's own redis-server), the report says
/// what Redis did: round trips per hand-off and Redis's time per call.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_run_on_redis_reports_the_round_trips_per_hand_off() {
    let redis = switchboard_testkit::RedisServer::start().await;
    let report = run_with_claim_ceiling(redis.url(), &[]).await;
    let redis = &report["redis"];
    let round_trips = redis["round_trips_per_handoff"].as_f64().unwrap();
    // request, offer delivered, accept, complete, plus shares of heartbeats
    // and sweeps: a handful, never zero, never dozens.
    assert!(
        (2.0..20.0).contains(&round_trips),
        "round trips per hand-off {round_trips}: {redis:#}"
    );
    assert!(redis["micros_per_round_trip"].as_f64().unwrap() > 0.0);
    let commands: Vec<&str> = redis["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["command"].as_str())
        .collect();
    assert!(commands.contains(&"fcall"), "{commands:?}");
    assert!(
        redis["cpu_micros_per_handoff"].as_f64().unwrap() > 0.0,
        "{redis:#}"
    );
    // --compare-redis: redis-benchmark's claim ceiling on the same Redis,
    // and the run's hand-offs quoted in claim calls.
    assert!(report["redis_ceiling_error"].is_null(), "{report:#}");
    let comparison = &report["redis_ceiling"];
    let ceiling = &comparison["ceiling"];
    assert_eq!(ceiling["requests"].as_u64(), Some(2000), "{comparison:#}");
    assert!(
        ceiling["calls_per_sec"].as_f64().unwrap() > 0.0,
        "{comparison:#}"
    );
    let claim = comparison["claim_micros_per_call"].as_f64().unwrap();
    assert!(claim > 0.0, "{comparison:#}");
    let handoff = comparison["handoff_micros"].as_f64().unwrap();
    let expected = redis["round_trips_per_handoff"].as_f64().unwrap()
        * redis["micros_per_round_trip"].as_f64().unwrap();
    assert!(
        (handoff - expected).abs() < 1e-6 * expected.max(1.0),
        "{comparison:#}"
    );
    // A hand-off (request, delivery, accept, complete: a few dispatch
    // calls, each a state machine step) costs Redis more than one claim.
    let in_claims = comparison["claim_calls_per_handoff"].as_f64().unwrap();
    assert!((in_claims - handoff / claim).abs() < 1e-6 * in_claims.max(1.0));
    assert!(in_claims > 1.0, "{comparison:#}");
    let ratio = comparison["throughput_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{comparison:#}");
}

/// A claim ceiling that fails after the run (here: Redis refuses
/// redis-benchmark's 50 clients) leaves the run's report whole, with the
/// reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_ceiling_failing_after_the_run_keeps_the_report() {
    let redis = switchboard_testkit::RedisServer::start().await;
    let mut connection = redis.connection().await;
    // Room for the server's and the tool's few connections, not for 50.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg("12")
        .query_async(&mut connection)
        .await
        .unwrap();
    let report = run_with_claim_ceiling(redis.url(), &["--no-cpu-probe"]).await;
    // short_run checked exit 0, completed hand-offs and the invariants.
    assert!(report["redis"]["round_trips_per_handoff"].as_f64().unwrap() > 0.0);
    assert!(report["redis_ceiling"].is_null(), "{report:#}");
    let error = report["redis_ceiling_error"].as_str().unwrap();
    assert!(error.contains("redis-benchmark"), "{error}");
    // --no-cpu-probe: no readings and no error.
    assert_eq!(report["cpu_probe"].as_array().map(Vec::len), Some(0));
    assert!(report["cpu_probe_error"].is_null(), "{report:#}");
}

/// `switchboard-load` with `args`: its exit code and stderr.
fn exit_and_stderr(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-load"))
        .args(args)
        .output()
        .expect("run switchboard-load");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A Redis the comparison cannot drive is refused before the load starts.
#[test]
fn compare_redis_refuses_a_unix_socket_before_the_run() {
    let (code, stderr) = exit_and_stderr(&[
        "run",
        "--server",
        "http://127.0.0.1:1",
        "--redis-url",
        "redis+unix:///tmp/none.sock",
        "--compare-redis",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid arguments") && stderr.contains("--compare-redis"),
        "{stderr}"
    );
}

/// Without --redis-url, --compare-redis is refused by name.
#[test]
fn compare_redis_needs_a_redis_url() {
    let (code, stderr) = exit_and_stderr(&["run", "--compare-redis"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("--redis-url"), "{stderr}");
}

/// The echo ceiling's own server and load work end to end.
#[test]
fn the_echo_ceiling_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-load"))
        .args([
            "echo",
            "--listeners",
            "10",
            "--rates",
            "50",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--json",
        ])
        .output()
        .expect("run switchboard-load echo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let step = &report["steps"][0];
    assert!(step["push"]["count"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(step["errors"].as_u64(), Some(0), "{report:#}");
    let steal = step["host_steal"]["percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&steal), "{report:#}");
}
