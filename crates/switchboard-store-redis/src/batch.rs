//! Group commit: the dispatch-script calls that queue up while this
//! replica's previous call is in flight go to Redis together, one FCALL
//! per pool (`batch` in `dispatch.lua`), each command answered as if it
//! had been called alone.
//!
//! # Why
//!
//! Under load most of what Redis spends on a call is not the command's own
//! work: the FCALL and its arguments, `begin`, the outage check, writing
//! rows and events back, the reply, and the round trip's reads, writes and
//! wake-ups on both sides. A batch pays those once. Nothing waits for a
//! batch to fill: a call made while none is in flight goes at once, alone,
//! in the plain form, so at low load the calls are what they were; the
//! busier the replica or Redis, the more calls share one round trip.
//!
//! # Order and failure
//!
//! One batch is in flight at a time, so a replica's calls reach Redis in
//! the order they were made (calls to different pools may be reordered
//! among themselves; they touch disjoint keys). Within a pool's batch the
//! commands run in that order at one `now`. A call whose caller gave up
//! (timed out, dropped) before its batch left is not sent. A Redis error
//! (connection lost, timeout) fails every call of the batch alike, as it
//! failed every call in flight on the connection before.

use redis::Value;
use redis::aio::ConnectionManager;
use switchboard_core::PoolId;
use switchboard_store::StoreError;
use tokio::sync::{mpsc, oneshot};

use crate::keys;
use crate::script::{self, Library};

/// At most this many calls go in one round trip: a batch holds Redis for
/// the sum of its commands' work, so a bound keeps one round trip from
/// stalling the replicas behind it.
pub const MAX_BATCH: usize = 32;

/// Calls waiting for the batch task; a caller that finds the queue full
/// waits.
const QUEUE: usize = 4096;

/// What a script call carries besides its command: calls with equal heads
/// can share one FCALL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The pool: the call's one key is its prefix (`sb:{pool}:`).
    pub pool: PoolId,
    /// The test clock's argument (`0` in production).
    pub clock: String,
    pub contact_offset_ms: i64,
    /// See `Store::pause_delivery_checks`.
    pub paused: bool,
}

/// Builds and sends the library's calls on one connection.
#[derive(Clone)]
pub struct Caller {
    pub manager: ConnectionManager,
    pub library: Library,
    /// The dispatch settings as script arguments, rendered once.
    pub settings_args: [String; script::SETTINGS],
    /// The Redis address for messages, without credentials.
    pub address: String,
}

impl Caller {
    /// The FCALL up to (not including) the command's own arguments.
    fn fcall(&self, head: &Head, command: &str) -> redis::Cmd {
        let mut call = redis::cmd("FCALL");
        call.arg(&self.library.function)
            .arg(1)
            .arg(keys::prefix(&head.pool))
            .arg(command)
            .arg(head.pool.as_str())
            .arg(&head.clock)
            .arg(head.contact_offset_ms)
            .arg(&self.settings_args[..])
            .arg(if head.paused { "1" } else { "0" });
        call
    }

    /// One command, as the library takes it alone.
    pub fn single(&self, head: &Head, command: &str, args: &[String]) -> redis::Cmd {
        let mut call = self.fcall(head, command);
        call.arg(args);
        call
    }

    /// One command alone, sent and its reply read (see [`Caller::send`]).
    pub async fn call_alone<T: redis::FromRedisValue>(
        &self,
        head: &Head,
        command: &str,
        args: &[String],
    ) -> Result<T, StoreError> {
        let call = self.single(head, command, args);
        self.send(|mut connection| {
            let call = call.clone();
            Box::pin(async move { call.query_async(&mut connection).await })
        })
        .await
    }

    /// Several commands of one head in one call (`batch`).
    fn batch<'a>(
        &self,
        head: &Head,
        commands: impl ExactSizeIterator<Item = (&'a str, &'a [String])>,
    ) -> redis::Cmd {
        let mut call = self.fcall(head, "batch");
        call.arg(commands.len());
        for (command, args) in commands {
            call.arg(command).arg(args.len()).arg(args);
        }
        call
    }

    /// Sends `cmd` (one command or a pipeline's worth); when Redis lost
    /// the library (restarted without persistence, FUNCTION FLUSH), loads
    /// it and sends once more.
    pub async fn send<T: redis::FromRedisValue>(
        &self,
        send: impl Fn(ConnectionManager) -> redis::RedisFuture<'static, T>,
    ) -> Result<T, StoreError> {
        let mut connection = self.manager.clone();
        match send(connection.clone()).await {
            Err(e) if script::is_function_missing(&e) => {
                tracing::warn!(
                    library = %self.library.name,
                    "the dispatch library was missing in redis; loading it again"
                );
                crate::load_library(&mut connection, &self.library)
                    .await
                    .map_err(|e| self.error(&e))?;
                send(connection).await.map_err(|e| self.error(&e))
            }
            result => result.map_err(|e| self.error(&e)),
        }
    }

    /// A Redis error as the store reports it.
    pub fn error(&self, e: &redis::RedisError) -> StoreError {
        if crate::is_connection_error(e) {
            crate::unavailable(&self.address, e)
        } else {
            tracing::error!(error = %e, "redis refused a store command");
            StoreError::Internal(format!("redis refused a store command: {e}"))
        }
    }
}

/// One call waiting for its batch.
struct Job {
    head: Head,
    command: &'static str,
    args: Vec<String>,
    reply: oneshot::Sender<Result<String, StoreError>>,
}

/// The callers' side: where a call is queued for the next batch.
#[derive(Clone, Debug)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// The queue and its task (spawn it; it ends when every [`Batcher`] is
    /// dropped).
    pub fn start(caller: Caller) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, jobs) = mpsc::channel(QUEUE);
        (Batcher { queue }, run(caller, jobs))
    }

    /// The script's reply to `command`, sent with whatever else is queued.
    pub async fn call(
        &self,
        head: Head,
        command: &'static str,
        args: Vec<String>,
    ) -> Result<String, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            head,
            command,
            args,
            reply,
        };
        let stopped = || StoreError::Internal("the redis store's call task has stopped".into());
        self.queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(caller: Caller, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A caller that gave up is not sent: its command never runs.
        batch.retain(|job| !job.reply.is_closed());
        if !batch.is_empty() {
            send(&caller, batch.drain(..)).await;
        }
    }
}

/// Sends the jobs (one FCALL per head, in one round trip) and answers each.
async fn send(caller: &Caller, jobs: impl Iterator<Item = Job>) {
    let mut groups: Vec<(Head, Vec<Job>)> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|(head, _)| *head == job.head) {
            Some((_, group)) => group.push(job),
            None => groups.push((job.head.clone(), vec![job])),
        }
    }
    // One call alone goes as a plain command, so its errors read as they
    // always did (a pipeline wraps a server's refusal in its own error).
    let sent = if let [(head, group)] = groups.as_slice()
        && let [job] = group.as_slice()
    {
        caller
            .call_alone::<Value>(head, job.command, &job.args)
            .await
            .map(|value| vec![value])
    } else {
        let mut pipe = redis::pipe();
        for (head, group) in &groups {
            if let [job] = group.as_slice() {
                pipe.add_command(caller.single(head, job.command, &job.args));
            } else {
                let commands = group.iter().map(|job| (job.command, job.args.as_slice()));
                pipe.add_command(caller.batch(head, commands));
            }
        }
        caller
            .send(|mut connection| {
                let pipe = pipe.clone();
                Box::pin(async move { pipe.query_async::<Vec<Value>>(&mut connection).await })
            })
            .await
    };
    let replies = match sent {
        Ok(replies) if replies.len() == groups.len() => replies,
        Ok(replies) => {
            let error = StoreError::Internal(format!(
                "redis answered {} of {} dispatch calls",
                replies.len(),
                groups.len()
            ));
            return answer_all(groups.into_iter().flat_map(|(_, group)| group), &error);
        }
        Err(error) => return answer_all(groups.into_iter().flat_map(|(_, group)| group), &error),
    };
    for ((_, group), reply) in groups.into_iter().zip(replies) {
        let single = group.len() == 1;
        match (single, reply) {
            (true, value) => {
                if let Some(job) = group.into_iter().next() {
                    let _ = job.reply.send(text(value));
                }
            }
            (false, Value::Array(values)) if values.len() == group.len() => {
                for (job, value) in group.into_iter().zip(values) {
                    let _ = job.reply.send(text(value));
                }
            }
            (false, other) => {
                let error = StoreError::Internal(format!(
                    "unreadable batch reply from the dispatch script: {other:?}"
                ));
                answer_all(group, &error);
            }
        }
    }
}

/// Fails every one of `jobs` with `error`.
fn answer_all(jobs: impl IntoIterator<Item = Job>, error: &StoreError) {
    for job in jobs {
        let _ = job.reply.send(Err(error.clone()));
    }
}

/// A script reply (a bulk string) as text.
fn text(value: Value) -> Result<String, StoreError> {
    redis::from_redis_value(value).map_err(|e| {
        StoreError::Internal(format!("unreadable reply from the dispatch script: {e}"))
    })
}
