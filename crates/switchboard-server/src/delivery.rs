//! Delivery marks, batched: an agent stream that wrote an offer tells the
//! store so ([`Store::offers_delivered`]) through one task per replica,
//! which sends the marks that queued up as one call per pool, at most one
//! round of calls every [`LINGER`]. With Redis that is one round trip for
//! many offers instead of one each (at 1,000 hand-offs/s, ~10 marks per
//! call instead of ~1: one Redis call per hand-off fewer). At low load a
//! mark goes out at once, alone (nothing waits for a batch to fill); a mark
//! waits at most [`LINGER`], a hundredth of the default delivery grace.
//!
//! A stream no longer waits for the store before its next event. A mark
//! still reaches the store within the delivery grace unless the store is
//! that far behind, when the admission monitor pauses the delivery checks
//! anyway (see `admission::DeliveryPause`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::{AgentId, OfferId, PoolId};
use switchboard_store::Store;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// At most this many marks go in one call: a batch holds Redis for a few
/// tens of µs per mark, so a bound keeps one call from stalling the others.
pub const MAX_BATCH: usize = 64;

/// Marks waiting for the task; a stream that finds the queue full waits, as
/// it waited for its own call before marks were batched.
const QUEUE: usize = 4096;

/// A round of calls starts no sooner than this after the previous one began:
/// marks that come meanwhile wait and go together.
pub const LINGER: Duration = Duration::from_millis(10);

type Mark = (PoolId, AgentId, OfferId);

/// The streams' side: where a written offer is reported.
#[derive(Clone, Debug)]
pub struct DeliveryMarks {
    queue: mpsc::Sender<Mark>,
}

impl DeliveryMarks {
    /// The marks and the task that sends them (spawn it; it ends when
    /// `cancel` fires, after sending what was already queued, or when every
    /// [`DeliveryMarks`] is dropped).
    pub fn start(
        store: Arc<dyn Store>,
        cancel: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, marks) = mpsc::channel(QUEUE);
        (Self { queue }, run(store, marks, cancel))
    }

    /// The agent's stream wrote this offer. Returns once the mark is
    /// queued; after shutdown it is dropped (the stream is ending, and
    /// the offer goes back to the queue as undelivered).
    pub async fn delivered(&self, pool: &PoolId, agent: &AgentId, offer: &OfferId) {
        let mark = (pool.clone(), agent.clone(), offer.clone());
        if self.queue.send(mark).await.is_err() {
            tracing::debug!(pool = %pool, agent = %agent, offer = %offer, "delivery mark after shutdown; dropped");
        }
    }
}

async fn run(store: Arc<dyn Store>, mut marks: mpsc::Receiver<Mark>, cancel: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut previous_round: Option<Instant> = None;
    loop {
        tokio::select! {
            // Shutting down: no new marks, but what was queued still goes
            // out (`recv` returns it, then `None`).
            () = cancel.cancelled(), if !marks.is_closed() => marks.close(),
            received = marks.recv() => {
                let Some(first) = received else { break };
                batch.push(first);
                if let Some(previous) = previous_round {
                    tokio::time::sleep_until(previous + LINGER).await;
                }
                previous_round = Some(Instant::now());
                while batch.len() < MAX_BATCH
                    && let Ok(mark) = marks.try_recv()
                {
                    batch.push(mark);
                }
                send(store.as_ref(), &mut batch).await;
            }
        }
    }
}

/// One call per pool in the batch (never empty: `run` sends once it has a
/// mark), the pools' calls at once; empties it.
async fn send(store: &dyn Store, batch: &mut Vec<Mark>) {
    let by_pool = by_pool(batch.drain(..));
    let calls = by_pool.iter().map(|(pool, marks)| async move {
        if let Err(e) = store.offers_delivered(pool, marks).await {
            tracing::warn!(pool = %pool, offers = marks.len(), error = %e, "could not mark offers delivered");
        }
    });
    futures::future::join_all(calls).await;
}

/// The marks grouped by pool, each pool's in the order they came.
fn by_pool(marks: impl Iterator<Item = Mark>) -> BTreeMap<PoolId, Vec<(AgentId, OfferId)>> {
    let mut by_pool: BTreeMap<PoolId, Vec<(AgentId, OfferId)>> = BTreeMap::new();
    for (pool, agent, offer) in marks {
        by_pool.entry(pool).or_default().push((agent, offer));
    }
    by_pool
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_store::conformance::{
        agent, cid, handoff, offer, online_with_stream, pool, settings,
    };
    use switchboard_store::{ManualClock, MemoryStore};

    #[test]
    fn marks_are_grouped_by_pool_in_order() {
        let (p1, p2) = (pool("p1"), pool("p2"));
        let grouped = by_pool(
            [
                (p2.clone(), agent("a"), offer("c1", 1)),
                (p1.clone(), agent("b"), offer("c2", 1)),
                (p2.clone(), agent("c"), offer("c3", 2)),
            ]
            .into_iter(),
        );
        assert_eq!(
            grouped,
            BTreeMap::from([
                (p1, vec![(agent("b"), offer("c2", 1))]),
                (
                    p2,
                    vec![(agent("a"), offer("c1", 1)), (agent("c"), offer("c3", 2))]
                ),
            ])
        );
    }

    /// Two pools, three agents each with an offer; returns the store and
    /// each offer as (pool, agent, conversation id).
    async fn offers_in_two_pools() -> (Arc<dyn Store>, Vec<(PoolId, AgentId, String)>) {
        let clock = ManualClock::new(1_000_000);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(settings(), Arc::new(clock.clone())));
        let mut offers = Vec::new();
        for p in [pool("p1"), pool("p2")] {
            for i in 0..3 {
                online_with_stream(store.as_ref(), &p, &format!("agent-{i}")).await;
                clock.advance(5);
            }
            for i in 0..3 {
                let conversation = format!("{p}-c{i}");
                let (c, _) = store
                    .request(&p, handoff(&conversation))
                    .await
                    .unwrap()
                    .value;
                let holder = c.agent_id.expect("a free agent was offered it");
                offers.push((p.clone(), holder, conversation));
            }
        }
        (store, offers)
    }

    async fn delivered(store: &dyn Store, offers: &[(PoolId, AgentId, String)]) -> Vec<bool> {
        let mut marked = Vec::new();
        for (p, _, conversation) in offers {
            let c = store.conversation(p, &cid(conversation)).await.unwrap();
            marked.push(c.offers.iter().all(|o| o.delivered));
        }
        marked
    }

    #[tokio::test]
    async fn every_mark_reaches_the_store() {
        let (store, offers) = offers_in_two_pools().await;
        assert_eq!(delivered(store.as_ref(), &offers).await, [false; 6]);
        let (marks, task) = DeliveryMarks::start(store.clone(), CancellationToken::new());
        let task = tokio::spawn(task);
        for (p, holder, conversation) in &offers {
            marks.delivered(p, holder, &offer(conversation, 1)).await;
        }
        drop(marks);
        task.await.expect("the task ends once every sender is gone");
        assert_eq!(delivered(store.as_ref(), &offers).await, [true; 6]);
    }

    /// Lets the delivery task run what it can without time moving.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_mark_goes_out_at_once_unless_a_round_just_went() {
        let (store, offers) = offers_in_two_pools().await;
        let (marks, task) = DeliveryMarks::start(store.clone(), CancellationToken::new());
        let task = tokio::spawn(task);
        let ids: Vec<OfferId> = offers.iter().map(|(_, _, c)| offer(c, 1)).collect();
        // (time passed, then offers marked, then which the store holds).
        let steps: [(Duration, &[usize], [bool; 6], &str); 4] = [
            (
                Duration::ZERO,
                &[0],
                [true, false, false, false, false, false],
                "the first mark goes out at once",
            ),
            (
                Duration::ZERO,
                &[1, 3],
                [true, false, false, false, false, false],
                "the next ones wait for the linger",
            ),
            (
                LINGER,
                &[],
                [true, true, false, true, false, false],
                "then go out together, one call per pool",
            ),
            (
                LINGER * 5,
                &[2],
                [true, true, true, true, false, false],
                "a mark long after the last round goes out at once",
            ),
        ];
        for (wait, marked_now, held, why) in steps {
            tokio::time::sleep(wait).await;
            for &i in marked_now {
                marks.delivered(&offers[i].0, &offers[i].1, &ids[i]).await;
            }
            settle().await;
            assert_eq!(delivered(store.as_ref(), &offers).await, held, "{why}");
        }
        drop(marks);
        task.await.expect("the task ends once every sender is gone");
    }

    #[tokio::test]
    async fn marks_queued_before_shutdown_still_go_out() {
        let (store, offers) = offers_in_two_pools().await;
        let cancel = CancellationToken::new();
        let (marks, task) = DeliveryMarks::start(store.clone(), cancel.clone());
        for (p, holder, conversation) in &offers {
            marks.delivered(p, holder, &offer(conversation, 1)).await;
        }
        cancel.cancel();
        task.await;
        assert_eq!(delivered(store.as_ref(), &offers).await, [true; 6]);
        marks
            .delivered(&offers[0].0, &offers[0].1, &offer("late", 1))
            .await;
    }
}
