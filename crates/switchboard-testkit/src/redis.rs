//! A `redis-server` of the test's own: a free port, a temporary directory,
//! killed on drop. Never the machine's Redis on 6379. No persistence by
//! default; [`RedisServer::start_with_aof`] runs it as production should
//! (AOF, fsync every second), and [`RedisServer::restart`] brings a crashed
//! one back on the same port and directory, so it reloads what it had.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// How long a fresh server may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How often to try it meanwhile.
const RETRY_EVERY: Duration = Duration::from_millis(10);

pub struct RedisServer {
    child: Child,
    port: u16,
    dir: TempDir,
    persistence: Persistence,
}

/// How the server keeps its data across a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Persistence {
    /// Nothing on disk: a restart starts empty.
    None,
    /// `--appendonly yes --appendfsync everysec`: a crash loses at most
    /// about the last second of writes.
    AofEverySec,
}

impl RedisServer {
    /// Starts `redis-server` and returns once it answers PING. Fails the test
    /// (never skips it) when `redis-server` is missing or does not come up.
    pub async fn start() -> RedisServer {
        Self::start_persisting(Persistence::None).await
    }

    /// Like [`RedisServer::start`], with the append-only file on and fsync
    /// every second (the durability the deployment docs promise).
    pub async fn start_with_aof() -> RedisServer {
        Self::start_persisting(Persistence::AofEverySec).await
    }

    async fn start_persisting(persistence: Persistence) -> RedisServer {
        // A port found free may be taken before the server binds it: then
        // the server exits and we try another.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
            let port = free_port();
            let child = spawn(port, dir.path(), persistence);
            let mut server = RedisServer {
                child,
                port,
                dir,
                persistence,
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not come up on a free port; its log:\n{last_log}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new connection to this server (for tests that inspect its state).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a valid redis url")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test redis at {}: {e}", self.url()))
    }

    /// How many times each command ran so far (`INFO commandstats`, by
    /// lower-case name: `fcall`, `zadd`, ...), commands inside scripts
    /// included.
    pub async fn command_calls(&self) -> HashMap<String, u64> {
        command_calls(&mut self.connection().await).await
    }

    /// Starts the server again on the same port and directory (killing it
    /// first if it still runs) and returns once it answers PING; with AOF it
    /// has reloaded its data by then (Redis answers LOADING until it has).
    pub async fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; Redis binds with SO_REUSEADDR, so
        // only another process grabbing it in between could fail this.
        self.child = spawn(self.port, self.dir.path(), self.persistence);
        if let Err(log) = self.wait_ready().await {
            panic!(
                "redis-server did not come back on port {}; its log:\n{log}",
                self.port
            );
        }
    }

    /// Retries the connection until PING answers; no fixed sleep. `Err`
    /// with the server's log if it exited.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = redis::Client::open(self.url()).expect("a valid redis url");
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(format!("(exited with {status})\n{log}"));
            }
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {READY_WITHIN:?}",
                self.port
            );
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Kills the server now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().expect("the port's address").port()
}

fn spawn(port: u16, dir: &Path, persistence: Persistence) -> Child {
    let aof: &[&str] = match persistence {
        Persistence::None => &["--appendonly", "no"],
        Persistence::AofEverySec => &["--appendonly", "yes", "--appendfsync", "everysec"],
    };
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(aof)
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "`redis-server` is not on PATH: the Redis store tests need a real Redis 7 \
                     (e.g. `apt-get install redis-server`); they are not skipped"
                )
            }
            panic!("cannot start redis-server: {e}")
        })
}

/// How many times each command ran on the server behind `connection` (see
/// [`RedisServer::command_calls`]).
pub async fn command_calls(
    connection: &mut ::redis::aio::MultiplexedConnection,
) -> HashMap<String, u64> {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').next()?.strip_prefix("calls=")?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}
