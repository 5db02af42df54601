//! `--realtime-senders`: the generator's two timing threads (the arrival
//! schedule and the senders' runtime) at real-time priority.
//!
//! # Why
//!
//! On this 2-core machine the tool's core is shared with its own stream
//! readers and, in the Redis runs, with Redis. Under the normal scheduler an
//! arrival that is due waits for whichever of those holds the core (a
//! Redis event-loop turn, a burst of stream reads), so the generator's own
//! schedule lag passed the 1 ms validity bound at rates the machine could
//! otherwise serve, and the run measured the tool, not the server. At
//! `SCHED_FIFO` priority 1 a due arrival preempts them. Only these two
//! threads are raised: the agents' stream readers, which do most of the
//! tool's work, stay under the normal scheduler (the whole tool at `chrt
//! -f` starved the machine). Nothing is hidden: latencies are still taken
//! from the intended send time, lag is still recorded, and the report
//! says the run used it.

use thread_priority::{
    RealtimeThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id,
};

/// Starts a thread named `name` that, with `realtime`, first puts itself at
/// real-time priority, then runs `body`. Returns once the thread runs
/// `body`, or the error that it could not take the priority (the thread
/// then ends at once, returning `T::default()`).
pub fn spawn<T: Default + Send + 'static>(
    name: &str,
    realtime: bool,
    body: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<T>> {
    use anyhow::Context;
    let (started, raised) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let raised = if realtime {
                raise_current_thread()
            } else {
                Ok(())
            };
            let failed = raised.is_err();
            let _ = started.send(raised);
            if failed { T::default() } else { body() }
        })
        .with_context(|| format!("cannot start the {name} thread"))?;
    raised
        .recv()
        .with_context(|| format!("the {name} thread ended at its start"))??;
    Ok(thread)
}

/// Puts the calling thread at `SCHED_FIFO`, the lowest real-time priority.
pub fn raise_current_thread() -> anyhow::Result<()> {
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "--realtime-senders: cannot give the generator's threads SCHED_FIFO priority ({e:?}); run as root or with CAP_SYS_NICE, or without the flag"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Either the thread gets SCHED_FIFO, or the error says which flag
    /// asked for it and how to get it: never a silent fallback.
    #[test]
    fn raising_a_thread_succeeds_or_names_the_flag() {
        let outcome = std::thread::spawn(|| {
            raise_current_thread().map(|()| {
                thread_priority::unix::thread_schedule_policy().map_err(|e| format!("{e:?}"))
            })
        })
        .join()
        .unwrap_or_else(|_| panic!("the test thread panicked"));
        match outcome {
            Ok(policy) => assert_eq!(
                policy,
                Ok(ThreadSchedulePolicy::Realtime(
                    RealtimeThreadSchedulePolicy::Fifo
                ))
            ),
            Err(e) => assert!(e.to_string().contains("--realtime-senders"), "{e}"),
        }
    }
}
