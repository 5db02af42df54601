//! The senders' own runtime: the open-loop side (the gateway of `run`, the
//! callers of `echo`) runs on a single-threaded tokio runtime in its own OS
//! thread, apart from the runtime that reads the agents' or listeners'
//! streams.
//!
//! # Why
//!
//! With one runtime, an arrival handed over by the schedule thread entered
//! tokio's injection queue behind every stream task woken by the same burst
//! of server pushes (up to hundreds with 10,000 agents on one worker), so
//! the generator's schedule lag, which is taken when the arrival first runs,
//! reached 1–4 ms at p99 with the tool at half a core: every run at
//! 2,000/s was INVALID, and the lateness was the tool's own. With a runtime
//! of their own, arrivals wait only for the OS to switch threads on the
//! tool's core. Nothing is hidden by this: lag is still taken when the
//! arrival runs, and a stream message read late still counts in full in the
//! latency it ends (request → offer is measured on the agents' side).

use std::future::Future;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A current-thread runtime driven by its own thread until [`Self::stop`].
pub struct SenderRuntime {
    handle: Handle,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl SenderRuntime {
    /// Starts the runtime's thread; with `realtime` at real-time priority
    /// (see [`crate::realtime`]), or not at all.
    pub fn start(name: &str, realtime: bool) -> anyhow::Result<SenderRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the senders' runtime")?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        // The runtime is dropped in that thread, outside any async context
        // (with the closure, if the thread could not take its priority).
        let thread = crate::realtime::spawn(name, realtime, move || {
            runtime.block_on(stopped.cancelled());
            drop(runtime);
        })?;
        Ok(SenderRuntime {
            handle,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the senders' tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on the senders' runtime (so the connections and tasks
    /// it creates live there) and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.handle
            .spawn(future)
            .await
            .context("a task on the senders' runtime failed")
    }

    /// `count` connections owned by the senders' runtime.
    pub async fn connect_many(&self, url: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
        let url = url.to_owned();
        self.run(async move { crate::client::connect_many(&url, count).await })
            .await?
    }

    /// Stops the runtime (its remaining tasks are dropped) and joins its
    /// thread. Call once nothing needs its connections any more.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for SenderRuntime {
    fn drop(&mut self) {
        // Only signal: joining here could block an async caller; the thread
        // ends on its own once signalled.
        self.stop.cancel();
    }
}
