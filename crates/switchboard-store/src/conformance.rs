//! The one conformance suite every [`Store`] must pass. Each check is a
//! public async function over a [`Harness`]; [`conformance_suite!`] turns
//! them into `#[tokio::test]`s for one store.
//!
//! Timings are short ([`settings`]) so a store on a real clock (Redis) runs
//! the suite in seconds; a manual clock just jumps.

// Test support code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::{Applied, Store, StoreError};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use switchboard_core::model::{
    AgentStatus, ConversationState, GoOnline, Handoff, RosterEntry, ShiftView, Skill, StatusChoice,
    TransferTarget,
};
use switchboard_core::plan::{
    PlanAging, PlanMaxWait, PlanMaxWaitAction, PlanRequirements, PlanStep, PlanStrategy,
};
use switchboard_core::{
    AgentId, ConversationId, DispatchSettings, DomainError, EventKind, OfferId, PoolId,
    RoutingPlan, Timestamp,
};

/// What the suite needs of a store under test.
#[async_trait]
pub trait Harness: Send + Sync {
    fn store(&self) -> Arc<dyn Store>;
    /// Another replica on the same state: for a store shared by processes
    /// (Redis), a second store connected to it, with its own settings of
    /// the per-process switches ([`Store::pause_delivery_checks`]); for an
    /// in-process store, the store itself (its one process is the only
    /// replica).
    fn replica(&self) -> Arc<dyn Store>;
    /// Moves the clock of the store and of its replica forward by at least
    /// `ms` (a manual clock jumps; a real one is waited for).
    async fn advance(&self, ms: i64);
}

/// The settings every harness builds its store with.
pub fn settings() -> DispatchSettings {
    DispatchSettings {
        offer_timeout_ms: 500,
        offer_delivery_grace_ms: 200,
        lease_ms: 1_000,
        heartbeat_interval_ms: 300,
        max_wait_ms: 3_000,
        missed_offers_before_away: 3,
        retention_ms: 60_000,
        wrap_up_ms: 0,
    }
}

/// [`settings`] with a wrap-up after every completed conversation.
pub fn wrap_up_settings() -> DispatchSettings {
    DispatchSettings {
        wrap_up_ms: 400,
        ..settings()
    }
}

/// Generates one `#[tokio::test]` per check for the harness built by
/// `$make(settings).await`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_suite!(@tests $make, $crate::conformance::wrap_up_settings;
            wrap_up_holds_offers_until_it_ends_or_the_agent_is_available
        );
        $crate::conformance_suite!(@tests $make, $crate::conformance::settings;
            happy_path_offer_accept_complete,
            decline_goes_to_next_agent,
            timeout_goes_to_next_agent_and_counts_a_miss,
            undelivered_offer_is_withdrawn_not_missed,
            offers_delivered_in_one_call,
            paused_delivery_checks_keep_undelivered_offers,
            paused_delivery_checks_hold_for_every_replica,
            lease_lapse_requeues_with_reason,
            heartbeat_keeps_the_lease,
            cancel_while_queued_and_offered,
            request_is_idempotent_and_conflicts_name_the_field,
            pools_are_isolated,
            max_wait_expires_with_reason,
            go_offline_requeues_at_once,
            resubscribe_gets_snapshot_with_pending_offer,
            offers_belong_to_their_agent,
            roster_narrowing_and_widening,
            sequence_numbers_increase_per_conversation,
            events_reach_the_feed,
            a_followed_pool_reaches_another_replicas_feed,
            stats_report_what_happened,
            drain_stops_offers_and_goes_offline_after_the_last_conversation,
            available_cancels_a_drain,
            reassign_to_the_queue_or_a_named_agent,
            reassign_refusals,
            transfer_to_a_queue_or_a_named_agent,
            transfer_refusals,
            csat_counts_once_in_the_shift_and_for_life,
            availability_counts_free_eligible_agents_and_estimates_the_wait,
            plan_relaxation_step_fires_after_the_wait,
            plan_regions_admit_only_agents_the_region_admits,
            plan_preferred_agent_gets_the_window,
            plan_strategies_pick_the_right_agent,
            plan_aging_reorders_the_queue,
            plan_max_wait_expires_overflows_or_calls_back,
            plan_reject_delay_holds_offers_after_a_decline,
            plan_timings_replace_the_pool_settings,
            plan_transfer_to_a_queue_keeps_a_plan,
            plan_refusals_name_the_field
        );
    };
    (@tests $make:path, $settings:path; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let harness = $make($settings()).await;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

// Fixtures, public so other store test suites build the same values.

/// A pool id (panics on an invalid name).
pub fn pool(name: &str) -> PoolId {
    PoolId::parse("pool", name).unwrap()
}

/// An agent id (panics on an invalid id).
pub fn agent(id: &str) -> AgentId {
    AgentId::parse("agent_id", id).unwrap()
}

/// A conversation id (panics on an invalid id).
pub fn cid(id: &str) -> ConversationId {
    ConversationId::parse("conversation_id", id).unwrap()
}

/// The offer id of attempt `attempt` of conversation `id`.
pub fn offer(id: &str, attempt: u32) -> OfferId {
    OfferId {
        conversation_id: cid(id),
        attempt,
    }
}

/// An English billing hand-off needing `billing` level 2.
pub fn handoff(id: &str) -> Handoff {
    Handoff {
        conversation_id: cid(id),
        customer_id: "customer-1".into(),
        language: "en".into(),
        category: "billing".into(),
        required_skills: vec![Skill::new("billing", 2)],
        priority: 1,
        summary: "wants a refund".into(),
        attributes: Default::default(),
        customer_asked_for_human: true,
        chat_reference: format!("chat://{id}"),
        preferred_agent: None,
        region: None,
        customer_location: None,
    }
}

/// Agent `id` with [`entry`]'s roster entry, online with the default
/// [`GoOnline`] and its stream attached: ready for offers.
pub async fn online_with_stream(store: &dyn Store, p: &PoolId, id: &str) {
    store.upsert_roster(p, entry(id)).await.unwrap();
    store
        .go_online(p, &agent(id), GoOnline::default(), false)
        .await
        .unwrap();
    store.attach_stream(p, &agent(id)).await.unwrap();
}

/// A roster entry: English, `billing` level 4, capacity 2.
pub fn entry(id: &str) -> RosterEntry {
    RosterEntry {
        agent_id: agent(id),
        display_name: id.to_uppercase(),
        skills: vec![Skill::new("billing", 4)],
        languages: vec!["en".into()],
        max_capacity: 2,
        allowed_regions: vec![],
        attributes: vec![],
        token_epoch: 0,
    }
}

/// Roster + online + stream attached, then a tiny step of time so agents
/// brought online one after another have distinct idle times.
async fn ready(h: &dyn Harness, p: &PoolId, id: &str) -> u64 {
    ready_entry(h, p, entry(id), 1).await
}

/// [`ready`] with a capacity of `capacity`.
async fn ready_with(h: &dyn Harness, p: &PoolId, id: &str, capacity: u32) {
    ready_entry(h, p, entry(id), capacity).await;
}

async fn status_of(h: &dyn Harness, p: &PoolId, id: &str) -> AgentStatus {
    h.store()
        .agents(p)
        .await
        .unwrap()
        .into_iter()
        .find(|presence| presence.agent_id == agent(id))
        .map_or(AgentStatus::Offline, |presence| presence.status)
}

fn notices(events: &[switchboard_core::Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Notice { code, message, .. } => Some((code.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

async fn state_of(
    h: &dyn Harness,
    p: &PoolId,
    id: &str,
) -> (ConversationState, Option<AgentId>, String) {
    let c = h.store().conversation(p, &cid(id)).await.unwrap();
    (c.state, c.agent_id, c.reason)
}

/// Moves the clock by `ms` and sweeps; returns what the sweep did.
async fn sweep_after(h: &dyn Harness, ms: i64) -> Applied<Option<Timestamp>> {
    h.advance(ms).await;
    h.store().sweep().await.unwrap()
}

fn domain(err: StoreError) -> DomainError {
    match err {
        StoreError::Domain(d) => d,
        other => panic!("expected a domain error, got {other:?}"),
    }
}

pub async fn happy_path_offer_accept_complete(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    let applied = store.request(&p, handoff("c1")).await.unwrap();
    let (conversation, created) = applied.value;
    assert!(created);
    assert_eq!(conversation.state, ConversationState::Offered);
    assert!(
        applied
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Queued { .. }))
    );
    let offered = applied
        .events
        .iter()
        .find(|e| matches!(e.kind, EventKind::Offered { .. }))
        .expect("offered event");
    assert_eq!(offered.agent_id, Some(agent("alice")));
    store
        .offer_delivered(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let assigned = store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    assert_eq!(assigned.value.state, ConversationState::Assigned);
    assert_eq!(assigned.value.handoff.chat_reference, "chat://c1");
    assert!(
        assigned
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Assigned { .. }))
    );
    let again = store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    assert_eq!(
        again.value.state,
        ConversationState::Assigned,
        "repeat accept returns the first result"
    );
    assert!(again.events.is_empty(), "a repeat changes nothing");
    let done = store
        .complete(&p, &agent("alice"), &cid("c1"), "resolved")
        .await
        .unwrap();
    assert_eq!(done.value.state, ConversationState::Completed);
    let again = store
        .complete(&p, &agent("alice"), &cid("c1"), "resolved")
        .await
        .unwrap();
    assert_eq!(again.value.state, ConversationState::Completed);
    let presence = store.agents(&p).await.unwrap();
    assert_eq!(presence[0].status, AgentStatus::Available);
    assert_eq!(presence[0].active_conversations, 0);
}

pub async fn decline_goes_to_next_agent(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "first").await;
    ready(h, &p, "second").await;
    store.request(&p, handoff("c1")).await.unwrap();
    assert_eq!(
        state_of(h, &p, "c1").await.1,
        Some(agent("first")),
        "longest idle first"
    );
    store
        .decline(&p, &agent("first"), &offer("c1", 1), "not now")
        .await
        .unwrap();
    let (state, holder, _) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, holder),
        (ConversationState::Offered, Some(agent("second")))
    );
    store
        .decline(&p, &agent("first"), &offer("c1", 1), "not now")
        .await
        .expect("repeat decline is fine");
    let err = domain(
        store
            .accept(&p, &agent("first"), &offer("c1", 1))
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
    store
        .decline(&p, &agent("second"), &offer("c1", 2), "")
        .await
        .unwrap();
    let (state, _, reason) = state_of(h, &p, "c1").await;
    assert_eq!(state, ConversationState::Queued, "both excluded: it waits");
    assert!(reason.starts_with("declined"), "{reason}");
}

pub async fn timeout_goes_to_next_agent_and_counts_a_miss(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "slow").await;
    ready(h, &p, "quick").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .offer_delivered(&p, &agent("slow"), &offer("c1", 1))
        .await
        .unwrap();
    sweep_after(h, 600).await;
    let (state, holder, _) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, holder),
        (ConversationState::Offered, Some(agent("quick")))
    );
    let err = domain(
        store
            .accept(&p, &agent("slow"), &offer("c1", 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.to_string(), "offer `c1#1` has expired");
    let shifts = store.shift_stats(&p).await.unwrap();
    let slow = shifts.iter().find(|s| s.agent_id == agent("slow")).unwrap();
    assert_eq!(slow.shift.missed, 1);
}

pub async fn undelivered_offer_is_withdrawn_not_missed(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "ghost").await;
    store.request(&p, handoff("c1")).await.unwrap();
    sweep_after(h, 300).await;
    let (state, _, reason) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, reason.as_str()),
        (ConversationState::Queued, "offer not delivered")
    );
    let shifts = store.shift_stats(&p).await.unwrap();
    assert_eq!(shifts[0].shift.missed, 0, "not the agent's miss");
    let presence = &store.agents(&p).await.unwrap()[0];
    assert!(
        !presence.stream_attached,
        "a stream that carries nothing gets no more offers"
    );
}

/// A replica marks the offers its streams wrote in one call: each named
/// agent's offer is delivered (two of one conversation included), another
/// agent's offer and an unknown one are ignored, and an offer left out is
/// still withdrawn after the grace.
pub async fn offers_delivered_in_one_call(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    ready(h, &p, "bob").await;
    ready(h, &p, "carol").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .decline(&p, &agent("alice"), &offer("c1", 1), "not now")
        .await
        .unwrap();
    store.request(&p, handoff("c2")).await.unwrap();
    store.request(&p, handoff("c3")).await.unwrap();
    let second = state_of(h, &p, "c1").await.1.expect("c1 offered again");
    let c2_holder = state_of(h, &p, "c2").await.1.expect("c2 offered");
    assert_ne!(second, c2_holder, "capacity 1: one offer each");
    store
        .offers_delivered(
            &p,
            &[
                (agent("alice"), offer("c1", 1)),
                (second.clone(), offer("c1", 2)),
                (second.clone(), offer("c2", 1)),
                (agent("alice"), offer("ghost", 1)),
                (c2_holder.clone(), offer("c2", 1)),
            ],
        )
        .await
        .unwrap();
    store
        .offers_delivered(&p, &[])
        .await
        .expect("an empty batch is fine");
    sweep_after(h, 300).await;
    let (state, holder, _) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, holder),
        (ConversationState::Offered, Some(second)),
        "delivered: kept past the grace"
    );
    assert_eq!(
        state_of(h, &p, "c2").await.0,
        ConversationState::Offered,
        "the holder's mark counts, the other agent's is ignored"
    );
    let (state, _, reason) = state_of(h, &p, "c3").await;
    assert_eq!(
        (state, reason.as_str()),
        (ConversationState::Queued, "offer not delivered"),
        "left out of the batch"
    );
    for (id, expected) in [("c1", vec![true, true]), ("c2", vec![true])] {
        let c = store.conversation(&p, &cid(id)).await.unwrap();
        let delivered: Vec<bool> = c.offers.iter().map(|o| o.delivered).collect();
        assert_eq!(delivered, expected, "{id}'s offers marked delivered");
    }
    assert!(
        matches!(
            store.conversation(&p, &cid("ghost")).await,
            Err(StoreError::Domain(DomainError::NotFound { .. }))
        ),
        "an unknown offer creates nothing"
    );
}

/// While the server runs behind it pauses the delivery checks: an offer it
/// has not yet marked delivered stays with its agent past the grace (the
/// mark is late, the stream is fine); resumed, the checks withdraw again.
pub async fn paused_delivery_checks_keep_undelivered_offers(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    store.pause_delivery_checks(true);
    store.request(&p, handoff("c1")).await.unwrap();
    sweep_after(h, 300).await;
    let (state, holder, _) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, holder),
        (ConversationState::Offered, Some(agent("alice"))),
        "not withdrawn while paused"
    );
    // The late mark arrives; the offer is the agent's to accept.
    store
        .offer_delivered(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    store.pause_delivery_checks(false);
    sweep_after(h, 100).await;
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    // Resumed: an offer nobody marks delivered is withdrawn again.
    ready(h, &p, "ghost").await;
    store.request(&p, handoff("c2")).await.unwrap();
    let (_, holder, _) = state_of(h, &p, "c2").await;
    assert_eq!(holder, Some(agent("ghost")));
    sweep_after(h, 300).await;
    let (state, _, reason) = state_of(h, &p, "c2").await;
    assert_eq!(
        (state, reason.as_str()),
        (ConversationState::Queued, "offer not delivered")
    );
}

/// A replica that runs behind pauses its delivery checks; another
/// replica's sweep must not withdraw the offers it is late to mark
/// delivered either, until a grace after the paused replica's last call.
/// (23 Nov 2026: two replicas on one Redis, each feed a second behind, the
/// other replica's sweeps withdrew offers the agents had received.)
pub async fn paused_delivery_checks_hold_for_every_replica(h: &dyn Harness) {
    let (behind, other, p) = (h.store(), h.replica(), pool("p1"));
    ready(h, &p, "alice").await;
    behind.pause_delivery_checks(true);
    behind.request(&p, handoff("c1")).await.unwrap();
    // The paused replica's sweeper calls on, well within every grace.
    h.advance(150).await;
    behind.sweep().await.unwrap();
    // Past the offer's delivery deadline, the other replica sweeps first:
    // the paused replica is late, not the agent's stream.
    h.advance(100).await;
    other.sweep().await.unwrap();
    let (state, holder, _) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, holder),
        (ConversationState::Offered, Some(agent("alice"))),
        "the other replica's sweep withdrew the paused replica's offer"
    );
    // The paused replica caught up and calls unpaused: a grace after its
    // last paused call (and before the offer times out), the other
    // replica's sweep withdraws what is still undelivered.
    behind.pause_delivery_checks(false);
    h.advance(220).await;
    other.sweep().await.unwrap();
    let (state, _, reason) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, reason.as_str()),
        (ConversationState::Queued, "offer not delivered")
    );
}

pub async fn lease_lapse_requeues_with_reason(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    sweep_after(h, 1_100).await;
    assert!(
        store.agents(&p).await.unwrap().is_empty(),
        "lease lapsed: offline"
    );
    let (state, holder, reason) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, holder, reason.as_str()),
        (ConversationState::Queued, None, "agent lost")
    );
}

pub async fn heartbeat_keeps_the_lease(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    for _ in 0..4 {
        h.advance(400).await;
        store.heartbeat(&p, &agent("alice"), None).await.unwrap();
        store.sweep().await.unwrap();
    }
    assert_eq!(store.agents(&p).await.unwrap().len(), 1);
    let err = domain(
        store
            .heartbeat(&p, &agent("nobody"), None)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
}

pub async fn cancel_while_queued_and_offered(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    store.request(&p, handoff("queued")).await.unwrap();
    let c = store
        .cancel(&p, &cid("queued"), "customer left")
        .await
        .unwrap()
        .value;
    assert_eq!(c.state, ConversationState::Abandoned);
    assert_eq!(c.reason, "cancelled by gateway: customer left");
    ready(h, &p, "alice").await;
    store.request(&p, handoff("offered")).await.unwrap();
    let applied = store.cancel(&p, &cid("offered"), "").await.unwrap();
    assert_eq!(applied.value.state, ConversationState::Abandoned);
    assert!(
        applied
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::OfferRevoked { .. }))
    );
    assert!(store.agents(&p).await.unwrap()[0].pending_offer.is_none());
    let again = store.cancel(&p, &cid("offered"), "twice").await.unwrap();
    assert_eq!(
        again.value.reason, "cancelled by gateway",
        "the first result"
    );
    let err = domain(store.cancel(&p, &cid("never"), "").await.unwrap_err());
    assert!(matches!(err, DomainError::NotFound { .. }));
}

pub async fn request_is_idempotent_and_conflicts_name_the_field(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    let (first, created) = store.request(&p, handoff("c1")).await.unwrap().value;
    assert!(created);
    let (again, created) = store.request(&p, handoff("c1")).await.unwrap().value;
    assert!(!created);
    assert_eq!(first.created_at, again.created_at);
    let mut different = handoff("c1");
    different.language = "de".into();
    let err = domain(store.request(&p, different).await.unwrap_err());
    assert_eq!(
        err,
        DomainError::Conflict {
            conversation_id: "c1".into(),
            field: "language".into()
        }
    );
}

pub async fn pools_are_isolated(h: &dyn Harness) {
    let store = h.store();
    ready(h, &pool("eu"), "alice").await;
    store.request(&pool("us"), handoff("c1")).await.unwrap();
    assert_eq!(
        state_of(h, &pool("us"), "c1").await.0,
        ConversationState::Queued,
        "no agent in us"
    );
    assert!(store.conversation(&pool("eu"), &cid("c1")).await.is_err());
    assert!(store.agents(&pool("us")).await.unwrap().is_empty());
    // The same id in another pool is another conversation.
    let (c, created) = store
        .request(&pool("eu"), handoff("c1"))
        .await
        .unwrap()
        .value;
    assert!(created);
    assert_eq!(c.agent_id, Some(agent("alice")));
}

pub async fn max_wait_expires_with_reason(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    store.request(&p, handoff("c1")).await.unwrap();
    sweep_after(h, 3_100).await;
    let (state, _, reason) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, reason.as_str()),
        (
            ConversationState::Expired,
            "no agent within the maximum wait"
        )
    );
    assert_eq!(store.queue_stats(&p).await.unwrap().total_queued, 0);
}

pub async fn go_offline_requeues_at_once(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let requeued = store
        .go_offline(&p, &agent("alice"), "agent went offline")
        .await
        .unwrap()
        .value;
    assert_eq!(requeued, vec![cid("c1")]);
    let (state, _, reason) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, reason.as_str()),
        (ConversationState::Queued, "agent went offline")
    );
    assert!(
        store
            .go_offline(&p, &agent("alice"), "again")
            .await
            .unwrap()
            .value
            .is_empty()
    );
}

pub async fn resubscribe_gets_snapshot_with_pending_offer(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    let first_stream = ready(h, &p, "alice").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .offer_delivered(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let (second_stream, snapshot) = store
        .attach_stream(&p, &agent("alice"))
        .await
        .unwrap()
        .value;
    assert_ne!(first_stream, second_stream);
    assert_eq!(snapshot.offers.len(), 1);
    assert_eq!(snapshot.offers[0].0.attempt, 1);
    // The old stream ending does not detach the new one.
    store
        .detach_stream(&p, &agent("alice"), first_stream)
        .await
        .unwrap();
    assert!(store.agents(&p).await.unwrap()[0].stream_attached);
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let snapshot = store.agent_snapshot(&p, &agent("alice")).await.unwrap();
    assert_eq!(snapshot.assignments.len(), 1);
    assert!(snapshot.offers.is_empty());
}

pub async fn offers_belong_to_their_agent(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    ready(h, &p, "mallory").await;
    store.request(&p, handoff("c1")).await.unwrap();
    let err = domain(
        store
            .accept(&p, &agent("mallory"), &offer("c1", 1))
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::PermissionDenied(_)), "{err}");
    let err = domain(
        store
            .complete(&p, &agent("mallory"), &cid("c1"), "x")
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
    let err = domain(
        store
            .accept(&p, &agent("alice"), &offer("c1", 9))
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
}

pub async fn roster_narrowing_and_widening(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    let (_, created) = store.upsert_roster(&p, entry("alice")).await.unwrap().value;
    assert!(created);
    let widen = GoOnline {
        skills: vec![Skill::new("billing", 5)],
        ..Default::default()
    };
    let err = domain(
        store
            .go_online(&p, &agent("alice"), widen, false)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&err, DomainError::PermissionDenied(m) if m.contains("skills[0].level")),
        "{err}"
    );
    let narrow = GoOnline {
        skills: vec![Skill::new("billing", 2)],
        capacity: Some(1),
        ..Default::default()
    };
    let presence = store
        .go_online(&p, &agent("alice"), narrow, false)
        .await
        .unwrap()
        .value;
    assert_eq!((presence.capacity, presence.skills[0].level), (1, 2));
    let err = domain(
        store
            .go_online(&p, &agent("stranger"), GoOnline::default(), false)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
    store
        .go_online(&p, &agent("stranger"), GoOnline::default(), true)
        .await
        .expect("self-registration");
    assert_eq!(store.roster(&p).await.unwrap().len(), 2);
    assert!(
        store
            .roster_entry(&p, &agent("stranger"))
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn sequence_numbers_increase_per_conversation(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "a").await;
    ready(h, &p, "b").await;
    let mut events = store.request(&p, handoff("c1")).await.unwrap().events;
    events.extend(
        store
            .decline(&p, &agent("a"), &offer("c1", 1), "")
            .await
            .unwrap()
            .events,
    );
    events.extend(
        store
            .accept(&p, &agent("b"), &offer("c1", 2))
            .await
            .unwrap()
            .events,
    );
    events.extend(
        store
            .complete(&p, &agent("b"), &cid("c1"), "ok")
            .await
            .unwrap()
            .events,
    );
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e.conversation_id() == Some(&cid("c1")))
        .map(|e| e.seq)
        .collect();
    assert!(seqs.len() >= 6, "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless and increasing: {seqs:?}"
    );
    assert_eq!(
        store.conversation(&p, &cid("c1")).await.unwrap().seq,
        *seqs.last().unwrap()
    );
}

pub async fn events_reach_the_feed(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    let mut feed = store.subscribe();
    let _following = store.follow(&p).await.unwrap();
    ready(h, &p, "alice").await;
    let events = store.request(&p, handoff("c1")).await.unwrap().events;
    let mut seen: HashMap<u64, String> = HashMap::new();
    while seen.len() < events.len() {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), feed.recv())
            .await
            .expect("event within 5 s")
            .expect("feed open");
        if event.conversation_id() == Some(&cid("c1")) {
            seen.insert(event.seq, event.kind.name().to_owned());
        }
    }
    assert_eq!(seen.get(&1).map(String::as_str), Some("queued"));
    assert_eq!(seen.get(&2).map(String::as_str), Some("offered"));
}

/// What a stream on one replica relies on: it registers with its feed,
/// follows its pool, then reads a snapshot; everything another replica
/// commits after that reaches it, in order, whatever else it followed.
pub async fn a_followed_pool_reaches_another_replicas_feed(h: &dyn Harness) {
    let (store, replica, p) = (h.store(), h.replica(), pool("p1"));
    ready(h, &p, "alice").await;
    // The replica follows another pool first: its feed already runs.
    let _other = replica.follow(&pool("p2")).await.unwrap();
    let mut feed = replica.subscribe();
    let first = replica.follow(&p).await.unwrap();
    let second = replica.follow(&p).await.unwrap();
    // One follower leaving does not stop the pool for the other.
    drop(first);
    let snapshot = replica.agent_snapshot(&p, &agent("alice")).await.unwrap();
    assert!(snapshot.offers.is_empty());
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), feed.recv())
            .await
            .expect("the other replica's events within 5 s")
            .expect("feed open");
        if event.conversation_id() == Some(&cid("c1")) {
            kinds.push((event.seq, event.kind.name().to_owned()));
        }
    }
    assert_eq!(
        kinds,
        [
            (1, "queued".to_owned()),
            (2, "offered".to_owned()),
            (3, "assigned".to_owned())
        ]
    );
    drop(second);
}

pub async fn stats_report_what_happened(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store.request(&p, handoff("c2")).await.unwrap();
    h.advance(50).await;
    let stats = store.queue_stats(&p).await.unwrap();
    assert_eq!(
        (stats.total_queued, stats.total_offered, stats.agents_online),
        (1, 1, 1)
    );
    let billing = stats.queues.iter().find(|q| q.skill == "billing").unwrap();
    assert_eq!(billing.depth, 1);
    assert!(billing.longest_wait_ms >= 50, "{}", billing.longest_wait_ms);
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    store
        .complete(&p, &agent("alice"), &cid("c1"), "ok")
        .await
        .unwrap();
    let shifts = store.shift_stats(&p).await.unwrap();
    assert_eq!(
        (
            shifts[0].shift.offers,
            shifts[0].shift.accepted,
            shifts[0].shift.completed
        ),
        (2, 1, 1)
    );
    assert!(shifts[0].online);
}

pub async fn drain_stops_offers_and_goes_offline_after_the_last_conversation(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready_with(h, &p, "alice", 2).await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let drained = store.drain(&p, &agent("alice")).await.unwrap();
    assert!(!drained.value, "one conversation in hand: not offline yet");
    assert_eq!(
        notices(&drained.events),
        vec![(
            "draining".to_owned(),
            "draining: no new offers; offline after the last conversation".to_owned()
        )]
    );
    assert_eq!(status_of(h, &p, "alice").await, AgentStatus::Draining);
    store.request(&p, handoff("c2")).await.unwrap();
    assert_eq!(
        state_of(h, &p, "c2").await.0,
        ConversationState::Queued,
        "a draining agent gets no new offers, spare capacity or not"
    );
    assert_eq!(store.queue_stats(&p).await.unwrap().agents_available, 0);
    let done = store
        .complete(&p, &agent("alice"), &cid("c1"), "resolved")
        .await
        .unwrap();
    assert_eq!(done.value.state, ConversationState::Completed);
    assert!(
        notices(&done.events).contains(&("offline".to_owned(), "drained".to_owned())),
        "{:?}",
        done.events
    );
    assert!(
        store.agents(&p).await.unwrap().is_empty(),
        "offline after the last one"
    );
    assert_eq!(state_of(h, &p, "c2").await.0, ConversationState::Queued);
    let shifts = store.shift_stats(&p).await.unwrap();
    assert!(!shifts[0].online && shifts[0].shift.ended_at.is_some());
    // Nothing in hand: offline at once.
    ready(h, &p, "bob").await;
    assert_eq!(
        state_of(h, &p, "c2").await.1,
        Some(agent("bob")),
        "bob is offered the waiting one"
    );
    store
        .decline(&p, &agent("bob"), &offer("c2", 1), "")
        .await
        .unwrap();
    assert!(store.drain(&p, &agent("bob")).await.unwrap().value);
    assert!(store.agents(&p).await.unwrap().is_empty());
    let err = domain(store.drain(&p, &agent("bob")).await.unwrap_err());
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
}

pub async fn available_cancels_a_drain(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready_with(h, &p, "alice", 2).await;
    store.request(&p, handoff("c1")).await.unwrap();
    // A pending offer is work in hand too: draining waits for its answer.
    assert!(!store.drain(&p, &agent("alice")).await.unwrap().value);
    let status = store
        .set_status(&p, &agent("alice"), StatusChoice::Available)
        .await
        .unwrap()
        .value;
    assert_eq!(status, AgentStatus::Available, "the drain is cancelled");
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    store.request(&p, handoff("c2")).await.unwrap();
    assert_eq!(
        state_of(h, &p, "c2").await.1,
        Some(agent("alice")),
        "offers again"
    );
    // Declining the last thing in hand ends a drain too.
    store
        .accept(&p, &agent("alice"), &offer("c2", 1))
        .await
        .unwrap();
    store.drain(&p, &agent("alice")).await.unwrap();
    store
        .complete(&p, &agent("alice"), &cid("c1"), "ok")
        .await
        .unwrap();
    assert_eq!(status_of(h, &p, "alice").await, AgentStatus::Draining);
    let cancelled = store.cancel(&p, &cid("c2"), "customer left").await.unwrap();
    assert!(
        notices(&cancelled.events).contains(&("offline".to_owned(), "drained".to_owned())),
        "the customer leaving the last conversation ends the drain: {:?}",
        cancelled.events
    );
}

pub async fn wrap_up_holds_offers_until_it_ends_or_the_agent_is_available(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    store
        .complete(&p, &agent("alice"), &cid("c1"), "resolved")
        .await
        .unwrap();
    assert_eq!(status_of(h, &p, "alice").await, AgentStatus::WrapUp);
    store.request(&p, handoff("c2")).await.unwrap();
    assert_eq!(
        state_of(h, &p, "c2").await.0,
        ConversationState::Queued,
        "no offers during wrap-up"
    );
    h.advance(300).await;
    store.sweep().await.unwrap();
    assert_eq!(state_of(h, &p, "c2").await.0, ConversationState::Queued);
    let swept = sweep_after(h, 150).await;
    assert!(
        notices(&swept.events).contains(&("status_changed".to_owned(), "wrap-up ended".to_owned())),
        "{:?}",
        swept.events
    );
    assert_eq!(
        state_of(h, &p, "c2").await.1,
        Some(agent("alice")),
        "wrap-up over: the waiting conversation is offered"
    );
    store
        .accept(&p, &agent("alice"), &offer("c2", 1))
        .await
        .unwrap();
    store
        .complete(&p, &agent("alice"), &cid("c2"), "resolved")
        .await
        .unwrap();
    store.request(&p, handoff("c3")).await.unwrap();
    assert_eq!(state_of(h, &p, "c3").await.0, ConversationState::Queued);
    // The app ends wrap-up early by going available.
    let status = store
        .set_status(&p, &agent("alice"), StatusChoice::Available)
        .await
        .unwrap()
        .value;
    assert_eq!(status, AgentStatus::Busy, "offered c3 at once");
    assert_eq!(state_of(h, &p, "c3").await.1, Some(agent("alice")));
}

pub async fn reassign_to_the_queue_or_a_named_agent(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    ready(h, &p, "bob").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let moved = store
        .reassign(&p, &cid("c1"), None, "customer asked")
        .await
        .unwrap();
    let requeued = moved
        .events
        .iter()
        .find(|e| matches!(e.kind, EventKind::Requeued { .. }))
        .expect("a requeued event");
    assert_eq!(
        requeued.agent_id,
        Some(agent("alice")),
        "the previous holder is told"
    );
    let c = moved.value;
    assert_eq!(
        (c.state, c.agent_id.clone()),
        (ConversationState::Offered, Some(agent("bob"))),
        "back to the queue, and on to someone else"
    );
    assert!(c.excluded.contains(&agent("alice")));
    let alice = store.agents(&p).await.unwrap();
    assert_eq!(alice[0].active_conversations, 0);
    // Straight to a named agent (even one excluded before): bob's offer is
    // withdrawn.
    let moved = store
        .reassign(&p, &cid("c1"), Some(&agent("alice")), "")
        .await
        .unwrap();
    assert_eq!(
        (moved.value.state, moved.value.agent_id.clone()),
        (ConversationState::Offered, Some(agent("alice")))
    );
    assert!(
        moved.events.iter().any(|e| matches!(
            &e.kind,
            EventKind::OfferRevoked { reason, .. } if reason == "reassigned by supervisor"
        )),
        "{:?}",
        moved.events
    );
    assert_eq!(moved.value.offers.last().unwrap().attempt, 3);
    // A queued conversation only changes its reason.
    store.request(&p, handoff("c2")).await.unwrap();
    let c2 = store.conversation(&p, &cid("c2")).await.unwrap();
    assert_eq!(c2.agent_id, Some(agent("bob")));
    store
        .decline(&p, &agent("bob"), &offer("c2", 1), "")
        .await
        .unwrap();
    let queued = store
        .reassign(&p, &cid("c2"), None, "priority customer")
        .await
        .unwrap();
    assert_eq!(queued.value.state, ConversationState::Queued);
    assert_eq!(
        queued.value.reason,
        "reassigned by supervisor: priority customer"
    );
    assert_eq!(queued.events.len(), 1, "{:?}", queued.events);
}

pub async fn reassign_refusals(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    store.request(&p, handoff("c1")).await.unwrap();
    let err = domain(
        store
            .reassign(&p, &cid("c1"), Some(&agent("alice")), "")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.to_string(),
        DomainError::precondition(
            "agent `alice` cannot take an offer now (status Busy, stream attached: true)"
        )
        .to_string(),
        "already the holder"
    );
    let err = domain(
        store
            .reassign(&p, &cid("c1"), Some(&agent("nobody")), "")
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
    store.cancel(&p, &cid("c1"), "").await.unwrap();
    let err = domain(store.reassign(&p, &cid("c1"), None, "").await.unwrap_err());
    assert_eq!(
        err.to_string(),
        DomainError::precondition("conversation `c1` is abandoned and cannot be reassigned")
            .to_string()
    );
    let err = domain(
        store
            .reassign(&p, &cid("never"), None, "")
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
}

pub async fn availability_counts_free_eligible_agents_and_estimates_the_wait(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    assert_eq!(
        store.availability(&p, &handoff("x"), 10).await.unwrap(),
        (0, -1),
        "nobody and no history"
    );
    ready(h, &p, "alice").await;
    ready(h, &p, "bob").await;
    assert_eq!(
        store.availability(&p, &handoff("x"), 10).await.unwrap(),
        (2, 0)
    );
    assert_eq!(
        store.availability(&p, &handoff("x"), 1).await.unwrap(),
        (1, 0),
        "counts up to the limit"
    );
    let mut fraud = handoff("x");
    fraud.required_skills = vec![Skill::new("fraud", 1)];
    assert_eq!(store.availability(&p, &fraud, 10).await.unwrap().0, 0);
    let mut in_region = handoff("x");
    in_region.region = Some("eu".into());
    assert_eq!(
        store.availability(&p, &in_region, 10).await.unwrap().0,
        0,
        "nobody may serve that region"
    );
    store.request(&p, handoff("c1")).await.unwrap();
    assert_eq!(
        store.availability(&p, &handoff("x"), 10).await.unwrap(),
        (1, 0),
        "an agent with an offer is not free"
    );
    store.request(&p, handoff("c2")).await.unwrap();
    h.advance(100).await;
    let (free, wait) = store.availability(&p, &handoff("x"), 10).await.unwrap();
    assert_eq!(free, 0);
    assert!(wait > 0, "two first offers so far give a rate: {wait}");
}

/// Roster + online + stream attached for an agent with only `skill` at 4.
async fn ready_with_skill(h: &dyn Harness, p: &PoolId, id: &str, skill: &str) {
    ready_entry(h, p, entry_with(id, &[(skill, 4)]), 1).await;
}

async fn shift_of(h: &dyn Harness, p: &PoolId, id: &str) -> ShiftView {
    h.store()
        .shift_stats(p)
        .await
        .unwrap()
        .into_iter()
        .find(|view| view.agent_id == agent(id))
        .unwrap_or_else(|| panic!("no shift for `{id}`"))
}

fn to_queue(category: &str, skills: Vec<Skill>, language: Option<&str>) -> TransferTarget {
    TransferTarget::Queue {
        category: category.into(),
        required_skills: skills,
        language: language.map(str::to_owned),
    }
}

pub async fn transfer_to_a_queue_or_a_named_agent(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    ready(h, &p, "bob").await;
    ready_with_skill(h, &p, "fred", "fraud").await;
    // Context that must travel untouched, including look-alikes of the
    // fields a transfer rewrites.
    let mut c1 = handoff("c1");
    c1.summary = r#"said "category":"x", {[\]} and left"#.into();
    c1.attributes = [("category", "vip"), ("language", "fr")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    c1.customer_location = Some(switchboard_core::model::Location {
        latitude: 48.208_176_1,
        longitude: 16.373_819,
    });
    store.request(&p, c1.clone()).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();

    // To the fraud queue: bob is free but lacks the skill, fred has it.
    let moved = store
        .transfer(
            &p,
            &agent("alice"),
            &cid("c1"),
            to_queue("fraud", vec![Skill::new("fraud", 3)], None),
            "card used abroad",
            None,
        )
        .await
        .unwrap();
    let c = &moved.value;
    assert_eq!(
        c.reason,
        "transferred by agent `alice` to queue:fraud: card used abroad"
    );
    assert_eq!(
        (c.state, c.agent_id.clone()),
        (ConversationState::Offered, Some(agent("fred"))),
        "only the eligible agent gets it"
    );
    assert_eq!(c.handoff.category, "fraud");
    assert_eq!(c.handoff.required_skills, vec![Skill::new("fraud", 3)]);
    assert_eq!(c.handoff.language, "en", "no language given: it stays");
    assert_eq!(
        (
            &c.handoff.summary,
            &c.handoff.attributes,
            &c.handoff.customer_location
        ),
        (&c1.summary, &c1.attributes, &c1.customer_location),
        "the context travels untouched"
    );
    assert_eq!(c.transfers.len(), 1);
    assert_eq!(
        (
            c.transfers[0].from_agent.as_str(),
            c.transfers[0].to.as_str(),
            c.transfers[0].note.as_str()
        ),
        ("alice", "queue:fraud", "card used abroad")
    );
    assert!(c.excluded.contains(&agent("alice")));
    let requeued = moved
        .events
        .iter()
        .find(|e| matches!(e.kind, EventKind::Requeued { .. }))
        .expect("a requeued event");
    assert_eq!(
        requeued.agent_id,
        Some(agent("alice")),
        "the transferring agent is told its part ended"
    );
    assert!(
        moved
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Offered { .. })
                && e.agent_id == Some(agent("fred"))),
        "{:?}",
        moved.events
    );
    let presence = store.agents(&p).await.unwrap();
    assert_eq!(presence[0].agent_id, agent("alice"));
    assert_eq!(presence[0].active_conversations, 0);

    // To a named colleague: an offer to that agent.
    store
        .accept(&p, &agent("fred"), &offer("c1", 2))
        .await
        .unwrap();
    let moved = store
        .transfer(
            &p,
            &agent("fred"),
            &cid("c1"),
            TransferTarget::Agent(agent("bob")),
            "back to billing",
            None,
        )
        .await
        .unwrap();
    let c = &moved.value;
    assert_eq!(
        (c.state, c.agent_id.clone()),
        (ConversationState::Offered, Some(agent("bob")))
    );
    assert_eq!(
        c.reason,
        "transferred by agent `fred` to agent:bob: back to billing"
    );
    assert_eq!(c.transfers.len(), 2);
    assert_eq!(c.transfers[1].to, "agent:bob");
    assert!(c.excluded.contains(&agent("alice")) && c.excluded.contains(&agent("fred")));

    // Back to a queue in another language nobody speaks, with no skills
    // and no note: it waits.
    store
        .accept(&p, &agent("bob"), &offer("c1", 3))
        .await
        .unwrap();
    let moved = store
        .transfer(
            &p,
            &agent("bob"),
            &cid("c1"),
            to_queue("german", vec![], Some("de")),
            "",
            None,
        )
        .await
        .unwrap();
    let c = &moved.value;
    assert_eq!(c.state, ConversationState::Queued);
    assert_eq!(c.reason, "transferred by agent `bob` to queue:german");
    assert_eq!(
        (
            c.handoff.language.as_str(),
            c.handoff.category.as_str(),
            c.handoff.required_skills.len()
        ),
        ("de", "german", 0)
    );
    assert_eq!(c.handoff.chat_reference, "chat://c1");
    assert_eq!(c.transfers.len(), 3);
    assert_eq!(
        store.conversation(&p, &cid("c1")).await.unwrap().transfers,
        c.transfers,
        "the transfers are stored"
    );
    for (id, transfers) in [("alice", 1), ("fred", 1), ("bob", 1)] {
        let view = shift_of(h, &p, id).await;
        assert_eq!(
            (view.shift.transfers, view.shift.completed),
            (transfers, 0),
            "`{id}` counts a transfer, not a completion"
        );
    }
}

pub async fn transfer_refusals(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    ready(h, &p, "bob").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let refused = |target: TransferTarget, who: &'static str| {
        let store = store.clone();
        let p = p.clone();
        async move {
            domain(
                store
                    .transfer(&p, &agent(who), &cid("c1"), target, "note", None)
                    .await
                    .unwrap_err(),
            )
            .to_string()
        }
    };
    assert_eq!(
        refused(TransferTarget::Agent(agent("alice")), "bob").await,
        DomainError::precondition("conversation `c1` is not assigned to agent `bob`").to_string(),
        "only the holder transfers"
    );
    assert_eq!(
        refused(TransferTarget::Agent(agent("alice")), "alice").await,
        DomainError::precondition("agent `alice` cannot transfer a conversation to itself")
            .to_string()
    );
    assert_eq!(
        refused(TransferTarget::Agent(agent("nobody")), "alice").await,
        DomainError::precondition("agent `nobody` is offline: go online first").to_string()
    );
    store
        .set_status(
            &p,
            &agent("bob"),
            StatusChoice::Away {
                reason: "lunch".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        refused(TransferTarget::Agent(agent("bob")), "alice").await,
        DomainError::precondition(
            "agent `bob` cannot take an offer now (status Away, stream attached: true)"
        )
        .to_string()
    );
    // Nothing changed.
    let c = store.conversation(&p, &cid("c1")).await.unwrap();
    assert_eq!(
        (c.state, c.agent_id.clone(), c.transfers.len()),
        (ConversationState::Assigned, Some(agent("alice")), 0)
    );
    assert_eq!(shift_of(h, &p, "alice").await.shift.transfers, 0);
    // A queued conversation has no holder.
    store.request(&p, handoff("c2")).await.unwrap();
    let err = domain(
        store
            .transfer(
                &p,
                &agent("alice"),
                &cid("c2"),
                to_queue("billing", vec![], None),
                "",
                None,
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.to_string(),
        DomainError::precondition("conversation `c2` is not assigned to agent `alice`").to_string()
    );
    let err = domain(
        store
            .transfer(
                &p,
                &agent("alice"),
                &cid("never"),
                to_queue("billing", vec![], None),
                "",
                None,
            )
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
}

pub async fn csat_counts_once_in_the_shift_and_for_life(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    store.request(&p, handoff("c1")).await.unwrap();
    let err = domain(store.report_csat(&p, &cid("c1"), 5).await.unwrap_err());
    assert_eq!(
        err.to_string(),
        DomainError::precondition(
            "conversation `c1` is offered: CSAT is reported for completed conversations"
        )
        .to_string()
    );
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    store
        .complete(&p, &agent("alice"), &cid("c1"), "resolved")
        .await
        .unwrap();
    let reported = store.report_csat(&p, &cid("c1"), 4).await.unwrap();
    assert_eq!(reported.value.csat, Some(4));
    assert!(reported.events.is_empty(), "{:?}", reported.events);
    assert_eq!(
        store.conversation(&p, &cid("c1")).await.unwrap().csat,
        Some(4)
    );
    // The same report again is a no-op; a different score is refused.
    let again = store.report_csat(&p, &cid("c1"), 4).await.unwrap();
    assert_eq!(again.value.csat, Some(4));
    let err = domain(store.report_csat(&p, &cid("c1"), 2).await.unwrap_err());
    assert_eq!(
        err.to_string(),
        DomainError::precondition("conversation `c1` already has CSAT 4").to_string()
    );
    let view = shift_of(h, &p, "alice").await;
    assert_eq!((view.shift.csat_count, view.shift.csat_total), (1, 4));
    assert_eq!((view.quality.csat_count, view.quality.csat_total), (1, 4));

    // Quality outlives the shift; the next shift counts from zero.
    store.go_offline(&p, &agent("alice"), "done").await.unwrap();
    ready(h, &p, "alice").await;
    let view = shift_of(h, &p, "alice").await;
    assert_eq!((view.shift.csat_count, view.shift.csat_total), (0, 0));
    assert_eq!((view.quality.csat_count, view.quality.csat_total), (1, 4));
    store.request(&p, handoff("c2")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c2", 1))
        .await
        .unwrap();
    store
        .complete(&p, &agent("alice"), &cid("c2"), "resolved")
        .await
        .unwrap();
    store.report_csat(&p, &cid("c2"), 2).await.unwrap();
    let view = shift_of(h, &p, "alice").await;
    assert_eq!((view.shift.csat_count, view.shift.csat_total), (1, 2));
    assert_eq!((view.quality.csat_count, view.quality.csat_total), (2, 6));
    assert_eq!(view.quality.average(), Some(3.0));
    let err = domain(store.report_csat(&p, &cid("never"), 4).await.unwrap_err());
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
}

// ------------------------------------------------------------ routing plans

/// A plan step from `after_ms` on: `language`, `skills` (sorted here).
pub fn plan_step(after_ms: i64, language: &str, skills: &[(&str, u8)]) -> PlanStep {
    let mut requirements = PlanRequirements::language_only(language);
    requirements.skills = skills.iter().map(|(n, l)| Skill::new(*n, *l)).collect();
    requirements.skills.sort();
    PlanStep {
        after_ms,
        requirements,
    }
}

/// A plan of the `billing` queue with these steps, everything else default.
pub fn plan_of(steps: Vec<PlanStep>) -> RoutingPlan {
    RoutingPlan {
        queue: "billing".into(),
        steps,
        ..RoutingPlan::default()
    }
}

/// Roster + online (capacity `capacity`) + stream attached for `entry`,
/// then a tiny step of time (distinct idle times); returns the stream id.
async fn ready_entry(h: &dyn Harness, p: &PoolId, entry: RosterEntry, capacity: u32) -> u64 {
    let store = h.store();
    let id = entry.agent_id.clone();
    store.upsert_roster(p, entry).await.unwrap();
    store
        .go_online(
            p,
            &id,
            GoOnline {
                capacity: Some(capacity),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    let (stream, _) = store.attach_stream(p, &id).await.unwrap().value;
    h.advance(5).await;
    stream
}

/// [`entry`] with these skills.
fn entry_with(id: &str, skills: &[(&str, u8)]) -> RosterEntry {
    RosterEntry {
        skills: skills.iter().map(|(n, l)| Skill::new(*n, *l)).collect(),
        ..entry(id)
    }
}

/// Who the conversation is offered to now, if it is offered.
async fn offered_to(h: &dyn Harness, p: &PoolId, id: &str) -> Option<AgentId> {
    let c = h.store().conversation(p, &cid(id)).await.unwrap();
    (c.state == ConversationState::Offered)
        .then_some(c.agent_id)
        .flatten()
}

fn offered_in(events: &[switchboard_core::Event]) -> Vec<(String, AgentId)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Offered { offer, .. } => {
                Some((offer.conversation_id.to_string(), e.agent_id.clone()?))
            }
            _ => None,
        })
        .collect()
}

pub async fn plan_relaxation_step_fires_after_the_wait(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready_entry(h, &p, entry_with("junior", &[("billing", 2)]), 1).await;
    let plan = plan_of(vec![
        plan_step(0, "en", &[("billing", 4)]),
        plan_step(300, "en", &[("billing", 2)]),
    ]);
    let requested = store
        .request_with_plan(&p, handoff("c1"), plan)
        .await
        .unwrap();
    assert_eq!(
        requested.value.0.state,
        ConversationState::Queued,
        "the first step needs level 4"
    );
    let stats = store.queue_stats(&p).await.unwrap();
    assert_eq!(
        stats
            .queues
            .iter()
            .map(|q| (q.skill.as_str(), q.depth))
            .collect::<Vec<_>>(),
        vec![("billing", 1)],
        "counted under the skills in force"
    );
    sweep_after(h, 200).await;
    assert_eq!(offered_to(h, &p, "c1").await, None, "not due yet");
    let swept = sweep_after(h, 150).await;
    assert_eq!(
        offered_in(&swept.events),
        vec![("c1".to_owned(), agent("junior"))],
        "the step regroups it and it looks for an agent at once"
    );
    // A repeated request keeps the first plan and is not a conflict.
    let again = store
        .request_with_plan(&p, handoff("c1"), plan_of(vec![]))
        .await
        .unwrap();
    assert!(!again.value.1);
    assert_eq!(again.value.0.state, ConversationState::Offered);
}

pub async fn plan_regions_admit_only_agents_the_region_admits(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    let berlin = || BTreeSet::from(["berlin".to_owned()]);
    let listed = |id: &str| RosterEntry {
        allowed_regions: vec!["berlin".into()],
        ..entry(id)
    };
    // Longest idle first: outside (located elsewhere), unlisted (inside,
    // but its roster entry lists no region), inside (regions not known yet).
    ready_entry(h, &p, listed("outside"), 1).await;
    ready_entry(h, &p, entry("unlisted"), 1).await;
    ready_entry(h, &p, listed("inside"), 1).await;
    store
        .set_agent_regions(
            &p,
            &agent("outside"),
            Some(BTreeSet::from(["munich".to_owned()])),
        )
        .await
        .unwrap();
    store
        .set_agent_regions(&p, &agent("unlisted"), Some(berlin()))
        .await
        .unwrap();
    let mut step = plan_step(0, "en", &[("billing", 2)]);
    step.requirements.regions = Some(berlin());
    let plan = plan_of(vec![step]);
    assert_eq!(
        store
            .availability_with_plan(&p, &handoff("probe"), &plan, 10)
            .await
            .unwrap()
            .0,
        0,
        "nobody is admitted yet"
    );
    let requested = store
        .request_with_plan(&p, handoff("c1"), plan.clone())
        .await
        .unwrap();
    assert_eq!(
        requested.value.0.state,
        ConversationState::Queued,
        "residency fails closed: unknown regions admit nobody"
    );
    // The agent's regions become known: it looks for work at once.
    let resolved = store
        .set_agent_regions(&p, &agent("inside"), Some(berlin()))
        .await
        .unwrap();
    assert_eq!(
        offered_in(&resolved.events),
        vec![("c1".to_owned(), agent("inside"))]
    );
    // An empty roster list puts no limit only with `if_listed`.
    store
        .request_with_plan(&p, handoff("c2"), plan.clone())
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c2").await, None);
    let if_listed = RoutingPlan {
        roster_regions_if_listed: true,
        ..plan.clone()
    };
    assert_eq!(
        store
            .availability_with_plan(&p, &handoff("probe"), &if_listed, 10)
            .await
            .unwrap(),
        (1, 0)
    );
    store
        .request_with_plan(&p, handoff("c3"), if_listed)
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c3").await, Some(agent("unlisted")));
    // Forgetting the regions is not an error; an offline agent's is.
    store
        .set_agent_regions(&p, &agent("outside"), None)
        .await
        .unwrap();
    let err = domain(
        store
            .set_agent_regions(&p, &agent("nobody"), Some(berlin()))
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
}

pub async fn plan_preferred_agent_gets_the_window(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "other").await;
    ready(h, &p, "pref").await;
    let plan = RoutingPlan {
        preferred_window_ms: 400,
        offer_timeout_ms: Some(5_000),
        ..plan_of(vec![plan_step(0, "en", &[("billing", 2)])])
    };
    let returning = |id: &str| Handoff {
        preferred_agent: Some(agent("pref")),
        ..handoff(id)
    };
    store
        .request_with_plan(&p, returning("c1"), plan.clone())
        .await
        .unwrap();
    assert_eq!(
        offered_to(h, &p, "c1").await,
        Some(agent("pref")),
        "the preferred agent first, though `other` idles longer"
    );
    store
        .offer_delivered(&p, &agent("pref"), &offer("c1", 1))
        .await
        .unwrap();
    // The preferred agent is busy now: the next one waits for it.
    store
        .request_with_plan(&p, returning("c2"), plan)
        .await
        .unwrap();
    assert_eq!(
        offered_to(h, &p, "c2").await,
        None,
        "reserved in the window"
    );
    // `other` coming back from a break skips the reserved conversation.
    store
        .set_status(
            &p,
            &agent("other"),
            StatusChoice::Away {
                reason: "coffee".into(),
            },
        )
        .await
        .unwrap();
    store
        .set_status(&p, &agent("other"), StatusChoice::Available)
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c2").await, None);
    let swept = sweep_after(h, 450).await;
    assert_eq!(
        offered_in(&swept.events),
        vec![("c2".to_owned(), agent("other"))],
        "after the window anyone eligible may have it"
    );
}

pub async fn plan_strategies_pick_the_right_agent(h: &dyn Harness) {
    let store = h.store();
    let planned = |strategy: PlanStrategy| RoutingPlan {
        strategy,
        ..plan_of(vec![plan_step(0, "en", &[("billing", 2)])])
    };
    // Longest idle: the index order.
    let p = pool("idle");
    ready(h, &p, "first").await;
    ready(h, &p, "second").await;
    store
        .request_with_plan(&p, handoff("c1"), planned(PlanStrategy::LongestIdle))
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c1").await, Some(agent("first")));

    // Least occupied: `busy` idles longer but holds one of two.
    let p = pool("occupied");
    ready_entry(h, &p, entry("busy"), 2).await;
    store.request(&p, handoff("c0")).await.unwrap();
    store
        .accept(&p, &agent("busy"), &offer("c0", 1))
        .await
        .unwrap();
    ready_entry(h, &p, entry("free"), 2).await;
    store
        .request_with_plan(&p, handoff("c1"), planned(PlanStrategy::LeastOccupied))
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c1").await, Some(agent("free")));

    // Best skill match: the expert, though the novice idles longer.
    let p = pool("skill");
    ready_entry(h, &p, entry_with("novice", &[("billing", 2)]), 1).await;
    ready_entry(h, &p, entry_with("expert", &[("billing", 5)]), 1).await;
    store
        .request_with_plan(&p, handoff("c1"), planned(PlanStrategy::BestSkillMatch))
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c1").await, Some(agent("expert")));

    // Round robin: `recent` idles longer but was offered something.
    let p = pool("robin");
    ready_entry(
        h,
        &p,
        entry_with("recent", &[("billing", 4), ("fraud", 4)]),
        1,
    )
    .await;
    ready(h, &p, "never").await;
    let mut fraud = handoff("c0");
    fraud.required_skills = vec![Skill::new("fraud", 2)];
    store.request(&p, fraud).await.unwrap();
    store
        .decline(&p, &agent("recent"), &offer("c0", 1), "")
        .await
        .unwrap();
    store
        .request_with_plan(&p, handoff("c1"), planned(PlanStrategy::RoundRobin))
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c1").await, Some(agent("never")));

    // Quality weighted: `rated` (one 5: 25/6 > 4.0) completed last, so
    // `unrated` idles longer.
    let p = pool("quality");
    ready(h, &p, "rated").await;
    store.request(&p, handoff("c0")).await.unwrap();
    store
        .accept(&p, &agent("rated"), &offer("c0", 1))
        .await
        .unwrap();
    ready(h, &p, "unrated").await;
    store
        .complete(&p, &agent("rated"), &cid("c0"), "resolved")
        .await
        .unwrap();
    store.report_csat(&p, &cid("c0"), 5).await.unwrap();
    h.advance(5).await;
    store
        .request_with_plan(&p, handoff("c1"), planned(PlanStrategy::QualityWeighted))
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c1").await, Some(agent("rated")));
    store
        .request_with_plan(&p, handoff("c2"), planned(PlanStrategy::LongestIdle))
        .await
        .unwrap();
    assert_eq!(
        offered_to(h, &p, "c2").await,
        Some(agent("unrated")),
        "the control: longest idle picks the other"
    );
}

pub async fn plan_aging_reorders_the_queue(h: &dyn Harness) {
    let store = h.store();
    let at_priority = |priority: u8, rate_micro_per_second: u64| RoutingPlan {
        priority,
        aging: PlanAging {
            rate_micro_per_second,
            ceiling: 9,
        },
        ..plan_of(vec![plan_step(0, "en", &[("billing", 2)])])
    };
    // Without aging the later priority-5 conversation goes first; with 10
    // points a second the earlier priority-0 one reaches the ceiling after
    // 0.9 s and wins the tie at 9 by its longer wait.
    for (name, rate, first) in [("plain", 0, "high"), ("aging", 10_000_000, "low")] {
        let p = pool(name);
        store
            .request_with_plan(&p, handoff("low"), at_priority(0, rate))
            .await
            .unwrap();
        h.advance(1_000).await;
        store
            .request_with_plan(&p, handoff("high"), at_priority(5, rate))
            .await
            .unwrap();
        let low = store.conversation(&p, &cid("low")).await.unwrap();
        assert_eq!(
            low.queue_position, 1,
            "{name}: the queue position counts base priority"
        );
        ready(h, &p, "alice").await;
        assert_eq!(
            offered_to(h, &p, first).await,
            Some(agent("alice")),
            "{name}: `{first}` goes first"
        );
    }
}

pub async fn plan_max_wait_expires_overflows_or_calls_back(h: &dyn Harness) {
    let store = h.store();
    let nobody_qualifies = || vec![plan_step(0, "en", &[("fraud", 5)])];
    let with_action = |action: PlanMaxWaitAction| RoutingPlan {
        max_wait: Some(PlanMaxWait {
            after_ms: 300,
            action,
        }),
        ..plan_of(nobody_qualifies())
    };
    // Expire with the queue's reason.
    let p = pool("expire");
    let plan = with_action(PlanMaxWaitAction::Expire {
        reason: "closed for today".into(),
    });
    store
        .request_with_plan(&p, handoff("c1"), plan)
        .await
        .unwrap();
    sweep_after(h, 200).await;
    assert_eq!(state_of(h, &p, "c1").await.0, ConversationState::Queued);
    sweep_after(h, 150).await;
    let (state, _, reason) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, reason.as_str()),
        (ConversationState::Expired, "closed for today")
    );

    // Overflow to a queue anyone with billing may serve.
    let p = pool("overflow");
    ready(h, &p, "alice").await;
    let general = plan_of(vec![plan_step(0, "en", &[("billing", 1)])]);
    let plan = with_action(PlanMaxWaitAction::Overflow {
        queue: "general".into(),
        plan: Box::new(general),
    });
    store
        .request_with_plan(&p, handoff("c1"), plan)
        .await
        .unwrap();
    assert_eq!(state_of(h, &p, "c1").await.0, ConversationState::Queued);
    let swept = sweep_after(h, 350).await;
    let kinds: Vec<(&str, String)> = swept
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Requeued { conversation } => Some(("requeued", conversation.reason.clone())),
            EventKind::Offered { .. } => Some(("offered", String::new())),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (
                "requeued",
                "moved to queue `general` after the maximum wait".to_owned()
            ),
            ("offered", String::new())
        ]
    );
    assert_eq!(offered_to(h, &p, "c1").await, Some(agent("alice")));
    let c = store.conversation(&p, &cid("c1")).await.unwrap();
    assert_eq!(
        c.created_at, c.queued_since,
        "the place by waiting time stays"
    );

    // Callback: stays queued at the callback priority and never expires.
    let p = pool("callback");
    let plan = with_action(PlanMaxWaitAction::Callback {
        priority: 0,
        reason: "we will call you back".into(),
    });
    store
        .request_with_plan(&p, handoff("c1"), plan)
        .await
        .unwrap();
    let swept = sweep_after(h, 350).await;
    assert!(
        swept.events.iter().any(|e| matches!(&e.kind,
            EventKind::Requeued { conversation } if conversation.reason == "we will call you back")),
        "{:?}",
        swept.events
    );
    sweep_after(h, 4_000).await;
    let (state, _, reason) = state_of(h, &p, "c1").await;
    assert_eq!(
        (state, reason.as_str()),
        (ConversationState::Queued, "we will call you back"),
        "past the pool's maximum wait too"
    );
}

pub async fn plan_reject_delay_holds_offers_after_a_decline(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    let plan = RoutingPlan {
        reject_delay_ms: 400,
        ..plan_of(vec![plan_step(0, "en", &[("billing", 2)])])
    };
    store
        .request_with_plan(&p, handoff("c1"), plan)
        .await
        .unwrap();
    store
        .decline(&p, &agent("alice"), &offer("c1", 1), "")
        .await
        .unwrap();
    store.request(&p, handoff("c2")).await.unwrap();
    assert_eq!(offered_to(h, &p, "c2").await, None, "in the reject delay");
    assert_eq!(
        status_of(h, &p, "alice").await,
        AgentStatus::Available,
        "the status stays available"
    );
    sweep_after(h, 200).await;
    assert_eq!(offered_to(h, &p, "c2").await, None);
    let swept = sweep_after(h, 250).await;
    assert_eq!(
        offered_in(&swept.events),
        vec![("c2".to_owned(), agent("alice"))],
        "the delay ends: it looks for work at once"
    );
}

pub async fn plan_timings_replace_the_pool_settings(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    let plan = RoutingPlan {
        offer_timeout_ms: Some(250),
        misses_before_away: Some(1),
        wrap_up_ms: Some(300),
        ..plan_of(vec![plan_step(0, "en", &[("billing", 2)])])
    };
    let requested = store
        .request_with_plan(&p, handoff("c1"), plan.clone())
        .await
        .unwrap();
    let c = requested.value.0;
    assert_eq!(
        c.offers[0].deadline.millis_since(c.updated_at),
        250,
        "the plan's offer timeout"
    );
    store
        .offer_delivered(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let swept = sweep_after(h, 300).await;
    assert_eq!(
        notices(&swept.events),
        vec![(
            "missed_offers".to_owned(),
            "1 offers in a row were missed: set away".to_owned()
        )],
        "one miss is enough under this plan"
    );
    store
        .set_status(&p, &agent("alice"), StatusChoice::Available)
        .await
        .unwrap();
    store
        .request_with_plan(&p, handoff("c2"), plan)
        .await
        .unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c2", 1))
        .await
        .unwrap();
    store
        .complete(&p, &agent("alice"), &cid("c2"), "resolved")
        .await
        .unwrap();
    assert_eq!(status_of(h, &p, "alice").await, AgentStatus::WrapUp);
    sweep_after(h, 350).await;
    assert_eq!(status_of(h, &p, "alice").await, AgentStatus::Available);
}

pub async fn plan_transfer_to_a_queue_keeps_a_plan(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    ready(h, &p, "alice").await;
    ready_with_skill(h, &p, "fred", "fraud").await;
    store.request(&p, handoff("c1")).await.unwrap();
    store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap();
    let queued_since = store
        .conversation(&p, &cid("c1"))
        .await
        .unwrap()
        .queued_since;
    h.advance(50).await;
    // The fraud queue's plan: level 5 first, level 3 after 300 ms.
    let fraud = plan_of(vec![
        plan_step(0, "en", &[("fraud", 5)]),
        plan_step(300, "en", &[("fraud", 3)]),
    ]);
    let moved = store
        .transfer(
            &p,
            &agent("alice"),
            &cid("c1"),
            to_queue("fraud", vec![Skill::new("fraud", 3)], None),
            "",
            Some(fraud),
        )
        .await
        .unwrap();
    assert_eq!(
        moved.value.state,
        ConversationState::Queued,
        "level 5 first"
    );
    assert_eq!(
        moved.value.queued_since, queued_since,
        "the original waiting time counts"
    );
    sweep_after(h, 200).await;
    assert_eq!(offered_to(h, &p, "c1").await, None);
    let swept = sweep_after(h, 150).await;
    assert_eq!(
        offered_in(&swept.events),
        vec![("c1".to_owned(), agent("fred"))],
        "the target plan's step is due from the transfer on"
    );
}

pub async fn plan_refusals_name_the_field(h: &dyn Harness) {
    let (store, p) = (h.store(), pool("p1"));
    let bad = RoutingPlan {
        priority: 12,
        ..plan_of(vec![])
    };
    let err = domain(
        store
            .request_with_plan(&p, handoff("c1"), bad.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err,
        DomainError::invalid("plan.priority", "is 12, must be 0 to 9")
    );
    assert!(matches!(
        store.conversation(&p, &cid("c1")).await,
        Err(StoreError::Domain(DomainError::NotFound { .. }))
    ));
    let err = domain(
        store
            .availability_with_plan(&p, &handoff("x"), &bad, 10)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, DomainError::Invalid { .. }), "{err}");
    // A plan without steps routes on the hand-off's own requirements.
    ready(h, &p, "alice").await;
    store
        .request_with_plan(&p, handoff("c2"), plan_of(vec![]))
        .await
        .unwrap();
    assert_eq!(offered_to(h, &p, "c2").await, Some(agent("alice")));
}
