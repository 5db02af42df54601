//! One Redis round trip per call on the common path (request, accept,
//! decline, complete, heartbeat), measured on the test's own `redis-server`.
//!
//! Two witnesses, because `INFO commandstats` alone cannot tell a client's
//! command from one a script ran (both are counted):
//! - `INFO commandstats`: each call adds exactly one `fcall` (no `eval`,
//!   no `evalsha`, no `function|load`: the library is loaded).
//! - `MONITOR` (through `redis-cli`): between two markers, the only command
//!   a client sent is that one `FCALL`; everything else is the library's own
//!   (`[0 lua]`) or the event feed following the pool's stream on its own
//!   connection (`XREAD`, and the `TIME` it pipelines before each read to
//!   measure its lag: every command of a connection that reads streams),
//!   which is not on the call's path. The pool is followed, as a server
//!   with a stream in it does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;
use switchboard_core::model::{GoOnline, RosterEntry};
use switchboard_core::{DispatchSettings, PoolId};
use switchboard_store::Store;
use switchboard_store::conformance::{self, agent, cid, handoff, offer, online_with_stream};
use switchboard_store_redis::RedisStore;
use switchboard_testkit::RedisServer;
use switchboard_testkit::redis::command_calls;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The suite's roster entry with capacity 1.
fn entry(id: &str) -> RosterEntry {
    RosterEntry {
        max_capacity: 1,
        ..conformance::entry(id)
    }
}

/// `redis-cli MONITOR` on the test's server, read line by line.
struct Monitor {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The connections seen reading streams or the pool set: the feed's.
    feed_connections: HashSet<String>,
}

impl Monitor {
    async fn start(server: &RedisServer) -> Monitor {
        let mut child = Command::new("redis-cli")
            .args(["-u", &server.url(), "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `redis-cli monitor` (it comes with redis-server): {e}")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("MONITOR answers within 10 s")
            .expect("redis-cli output")
            .expect("redis-cli keeps running");
        assert_eq!(first.trim(), "OK", "MONITOR started");
        let mut monitor = Monitor {
            _child: child,
            lines,
            feed_connections: HashSet::new(),
        };
        monitor.learn_the_feed_connection().await;
        monitor
    }

    /// Waits for the feed's next read (it reads again at least every
    /// `RedisOptions::feed_block`) and notes its connection: within a window
    /// its `TIME` may come before its `XREAD` is seen.
    async fn learn_the_feed_connection(&mut self) {
        while self.feed_connections.is_empty() {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
                .await
                .expect("the feed reads within 10 s")
                .expect("redis-cli output")
                .expect("redis-cli keeps running");
            if let Some((source, rest)) = line.split_once("] ")
                && rest.to_ascii_uppercase().starts_with("\"XREAD\"")
            {
                self.feed_connections
                    .insert(connection_of(source).to_owned());
            }
        }
    }

    /// The commands clients sent between `ECHO begin` and `ECHO end`
    /// (uppercase names), leaving out the script's own and the feed's.
    async fn client_commands_until(&mut self, end: &str) -> Vec<String> {
        // (connection, command): which connection is the feed's may show
        // only after its first command in the window (TIME, then XREAD).
        let mut commands: Vec<(String, String)> = Vec::new();
        let mut started = false;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
                .await
                .expect("the end marker within 10 s")
                .expect("redis-cli output")
                .expect("redis-cli keeps running");
            // `<time> [<db> <client or lua>] "<COMMAND>" "<arg>" ...`
            let Some((source, rest)) = line.split_once("] ") else {
                continue;
            };
            let name = rest
                .split('"')
                .nth(1)
                .unwrap_or_default()
                .to_ascii_uppercase();
            if name == "ECHO" {
                if rest.contains(&format!("\"begin-{end}\"")) {
                    started = true;
                } else if rest.contains(&format!("\"{end}\"")) {
                    return commands
                        .into_iter()
                        .filter(|(connection, _)| !self.feed_connections.contains(connection))
                        .map(|(_, name)| name)
                        .collect();
                }
                continue;
            }
            let by_script = source.ends_with(" lua");
            if name == "XREAD" {
                self.feed_connections
                    .insert(connection_of(source).to_owned());
                continue;
            }
            if started && !by_script && name != "INFO" && !name.starts_with("CONFIG") {
                commands.push((connection_of(source).to_owned(), name));
            }
        }
    }
}

/// The client of a MONITOR line's source (`<time> [<db> <client>`).
fn connection_of(source: &str) -> &str {
    source.rsplit(' ').next().unwrap_or(source)
}

/// Runs `call` between two markers and checks both witnesses.
macro_rules! one_round_trip {
    ($connection:expr, $monitor:expr, $name:literal, $call:expr) => {{
        let connection = &mut $connection;
        let before = command_calls(connection).await;
        let _: String = redis::cmd("ECHO")
            .arg(concat!("begin-", $name))
            .query_async(connection)
            .await
            .unwrap();
        let result = $call.await;
        let _: String = redis::cmd("ECHO")
            .arg($name)
            .query_async(connection)
            .await
            .unwrap();
        let after = command_calls(connection).await;
        let delta = |command: &str| {
            after.get(command).copied().unwrap_or(0) - before.get(command).copied().unwrap_or(0)
        };
        assert_eq!(delta("fcall"), 1, "{}: one FCALL", $name);
        assert_eq!(delta("evalsha"), 0, "{}: no EVALSHA", $name);
        assert_eq!(delta("eval"), 0, "{}: no EVAL", $name);
        assert_eq!(
            delta("function|load"),
            0,
            "{}: the library is loaded",
            $name
        );
        assert_eq!(
            $monitor.client_commands_until($name).await,
            vec!["FCALL".to_owned()],
            "{}: the only command a client sent",
            $name
        );
        result
    }};
}

/// A store on `server`, and the test's own connection to it.
async fn store_and_connection(
    server: &RedisServer,
) -> (RedisStore, redis::aio::MultiplexedConnection) {
    let store = RedisStore::connect(&server.url(), DispatchSettings::default())
        .await
        .expect("the store connects");
    let connection = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the test's own connection");
    (store, connection)
}

#[tokio::test]
async fn the_common_path_costs_one_fcall_per_call() {
    let server = RedisServer::start().await;
    let (store, mut connection) = store_and_connection(&server).await;
    let p = PoolId::parse("pool", "p1").unwrap();
    // Warm up: the script loaded, the pool registered and followed (so
    // the feed reads it, as for a server with streams), both agents ready.
    let _following = store.follow(&p).await.unwrap();
    for id in ["alice", "bob"] {
        online_with_stream(&store, &p, id).await;
        store.advance_clock(5);
    }
    let mut monitor = Monitor::start(&server).await;

    let (c, _) = one_round_trip!(
        connection,
        monitor,
        "request",
        store.request(&p, handoff("c1"))
    )
    .unwrap()
    .value;
    assert_eq!(c.agent_id, Some(agent("alice")));
    one_round_trip!(
        connection,
        monitor,
        "decline",
        store.decline(&p, &agent("alice"), &offer("c1", 1), "busy")
    )
    .unwrap();
    // A replica's batch of delivered offers is one call, however many.
    one_round_trip!(
        connection,
        monitor,
        "offers_delivered",
        store.offers_delivered(
            &p,
            &[
                (agent("alice"), offer("c1", 1)),
                (agent("bob"), offer("c1", 2))
            ]
        )
    )
    .unwrap();
    let c = one_round_trip!(
        connection,
        monitor,
        "accept",
        store.accept(&p, &agent("bob"), &offer("c1", 2))
    )
    .unwrap()
    .value;
    assert_eq!(c.agent_id, Some(agent("bob")));
    one_round_trip!(
        connection,
        monitor,
        "complete",
        store.complete(&p, &agent("bob"), &cid("c1"), "resolved")
    )
    .unwrap();
    one_round_trip!(
        connection,
        monitor,
        "heartbeat",
        store.heartbeat(&p, &agent("alice"), None)
    )
    .unwrap();
}

/// Redis lost its functions (a restart without persistence, FUNCTION
/// FLUSH): the next call loads the library again and succeeds.
#[tokio::test]
async fn a_redis_that_lost_the_library_gets_it_back_on_the_next_call() {
    let server = RedisServer::start().await;
    let (store, mut connection) = store_and_connection(&server).await;
    let p = PoolId::parse("pool", "p1").unwrap();
    store.upsert_roster(&p, entry("alice")).await.unwrap();
    let _: String = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(libraries.is_empty(), "FUNCTION FLUSH removed the library");
    store
        .go_online(&p, &agent("alice"), GoOnline::default(), false)
        .await
        .expect("the call reloads the library and runs");
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(libraries.len(), 1, "the library is loaded again");
    let snapshot = store.agent_snapshot(&p, &agent("alice")).await.unwrap();
    assert_eq!(
        snapshot.status,
        switchboard_core::model::AgentStatus::Available,
        "alice is online: {snapshot:?}"
    );
}
