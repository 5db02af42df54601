//! A `redis-server` of the test's own: a free port, a temporary directory,
//! no persistence, killed on drop. Never the machine's Redis on 6379.

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
}

impl RedisServer {
    /// Starts `redis-server` and returns once it answers PING. Fails the test
    /// (never skips it) when `redis-server` is missing or does not come up.
    pub async fn start() -> RedisServer {
        // A port found free may be taken before the server binds it: then
        // the server exits and we try another.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
            let port = free_port();
            let child = spawn(port, dir.path());
            let mut server = RedisServer { child, port, dir };
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

fn spawn(port: u16, dir: &Path) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
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
