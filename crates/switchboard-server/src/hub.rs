//! Routes events from the store's feed to the streams attached to this
//! process: agent streams by (pool, agent), gateway watches by
//! (pool, conversation). One task reads the feed; routing is a map lookup,
//! never a scan of every stream.
//!
//! Each registration also follows its pool on the store's feed
//! ([`Store::follow`]): with Redis a replica reads only the event streams of
//! pools it holds streams in.
//!
//! A stream whose buffer is full is dropped rather than allowed to block
//! everyone: the client resubscribes and resynchronises from a snapshot
//! (delivery is at-least-once by design). If the hub itself lags behind the
//! feed, every stream is dropped for the same reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_core::{AgentId, ConversationId, Event, PoolId};
use switchboard_store::{EventFeed, Following, Store, StoreResult};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Events buffered per stream before it is dropped as too slow.
const STREAM_BUFFER: usize = 256;

type Subscribers<K> = HashMap<K, Vec<(u64, mpsc::Sender<Arc<Event>>)>>;

pub struct Hub {
    store: Arc<dyn Store>,
    // std Mutex: held only for map updates, never across an await.
    agents: Mutex<Subscribers<(PoolId, AgentId)>>,
    watches: Mutex<Subscribers<(PoolId, ConversationId)>>,
    next_id: AtomicU64,
}

/// A registration; dropping it unregisters (and stops following its pool).
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    key: SubscriptionKey,
    pub events: mpsc::Receiver<Arc<Event>>,
    _following: Option<Following>,
}

enum SubscriptionKey {
    Agent(PoolId, AgentId),
    Watch(PoolId, ConversationId),
}

impl Drop for Subscription {
    fn drop(&mut self) {
        match &self.key {
            SubscriptionKey::Agent(pool, agent) => {
                remove(&self.hub.agents, &(pool.clone(), agent.clone()), self.id);
            }
            SubscriptionKey::Watch(pool, conversation) => {
                remove(
                    &self.hub.watches,
                    &(pool.clone(), conversation.clone()),
                    self.id,
                );
            }
        }
    }
}

fn remove<K: std::hash::Hash + Eq>(map: &Mutex<Subscribers<K>>, key: &K, id: u64) {
    if let Ok(mut map) = map.lock()
        && let Some(list) = map.get_mut(key)
    {
        list.retain(|(i, _)| *i != id);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

fn deliver<K: std::hash::Hash + Eq>(map: &Mutex<Subscribers<K>>, key: &K, event: &Arc<Event>) {
    let Ok(mut map) = map.lock() else { return };
    let Some(list) = map.get_mut(key) else { return };
    // A full or closed stream is dropped: it resubscribes and gets a snapshot.
    list.retain(|(_, tx)| tx.try_send(event.clone()).is_ok());
    if list.is_empty() {
        map.remove(key);
    }
}

impl Hub {
    pub fn new(store: Arc<dyn Store>) -> Hub {
        Hub {
            store,
            agents: Mutex::default(),
            watches: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registers an agent's stream, then follows its pool: call before
    /// reading the snapshot, and nothing committed after it is missed.
    pub async fn subscribe_agent(
        self: &Arc<Self>,
        pool: &PoolId,
        agent: &AgentId,
    ) -> StoreResult<Subscription> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.agents.lock() {
            map.entry((pool.clone(), agent.clone()))
                .or_default()
                .push((id, tx));
        }
        let key = SubscriptionKey::Agent(pool.clone(), agent.clone());
        self.follow(id, key, rx, pool).await
    }

    /// Registers a gateway's watch, then follows its pool, as
    /// [`Hub::subscribe_agent`].
    pub async fn subscribe_conversation(
        self: &Arc<Self>,
        pool: &PoolId,
        conversation: &ConversationId,
    ) -> StoreResult<Subscription> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.watches.lock() {
            map.entry((pool.clone(), conversation.clone()))
                .or_default()
                .push((id, tx));
        }
        let key = SubscriptionKey::Watch(pool.clone(), conversation.clone());
        self.follow(id, key, rx, pool).await
    }

    /// The registration `id` (dropped, so unregistered, on an error), once
    /// its pool is followed.
    async fn follow(
        self: &Arc<Self>,
        id: u64,
        key: SubscriptionKey,
        events: mpsc::Receiver<Arc<Event>>,
        pool: &PoolId,
    ) -> StoreResult<Subscription> {
        let mut subscription = Subscription {
            hub: self.clone(),
            id,
            key,
            events,
            _following: None,
        };
        subscription._following = Some(self.store.follow(pool).await?);
        Ok(subscription)
    }

    /// The agents with a stream attached to this process.
    pub fn attached_agents(&self) -> Vec<(PoolId, AgentId)> {
        match self.agents.lock() {
            Ok(map) => map.keys().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Routes one event to its agent and its watchers.
    pub fn route(&self, event: Arc<Event>) {
        if let Some(agent) = &event.agent_id {
            deliver(&self.agents, &(event.pool.clone(), agent.clone()), &event);
        }
        if let Some(conversation) = event.conversation_id() {
            deliver(
                &self.watches,
                &(event.pool.clone(), conversation.clone()),
                &event,
            );
        }
    }

    /// Drops every stream (they resubscribe and get snapshots).
    fn drop_all(&self) {
        if let Ok(mut map) = self.agents.lock() {
            map.clear();
        }
        if let Ok(mut map) = self.watches.lock() {
            map.clear();
        }
    }

    /// Reads the feed until cancelled.
    pub async fn run(self: Arc<Self>, mut feed: EventFeed, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                received = feed.recv() => match received {
                    Ok(event) => self.route(event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "event hub lagged behind the store feed; dropping streams to resync");
                        self.drop_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        tracing::error!("store event feed closed");
                        return;
                    }
                },
            }
        }
    }
}
