//! Unit and property tests of the pool state machine. Time is a number we
//! pass in; nothing sleeps.

use super::*;
use crate::model::{GoOnline, Handoff};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

fn pool() -> PoolState {
    PoolState::new(
        PoolId::parse("pool", "test").unwrap(),
        DispatchSettings::default(),
    )
}

fn agent(id: &str) -> AgentId {
    AgentId::parse("agent_id", id).unwrap()
}

fn cid(id: &str) -> ConversationId {
    ConversationId::parse("conversation_id", id).unwrap()
}

fn roster(
    state: &mut PoolState,
    id: &str,
    skills: &[(&str, u8)],
    languages: &[&str],
    capacity: u32,
) {
    state.upsert_roster(RosterEntry {
        agent_id: agent(id),
        display_name: id.to_owned(),
        skills: skills.iter().map(|(n, l)| Skill::new(*n, *l)).collect(),
        languages: languages.iter().map(|l| (*l).to_owned()).collect(),
        max_capacity: capacity,
        allowed_regions: vec!["eu".to_owned()],
        attributes: vec![],
        token_epoch: 0,
    });
}

/// Roster, online and stream attached: ready for offers.
fn online(
    state: &mut PoolState,
    id: &str,
    skills: &[(&str, u8)],
    languages: &[&str],
    capacity: u32,
    now: i64,
) {
    roster(state, id, skills, languages, capacity);
    state
        .go_online(&agent(id), GoOnline::default(), false, Timestamp(now))
        .unwrap();
    state.attach_stream(&agent(id), Timestamp(now)).unwrap();
}

fn handoff(id: &str, language: &str, skills: &[(&str, u8)], priority: u8) -> Handoff {
    let mut required: Vec<Skill> = skills.iter().map(|(n, l)| Skill::new(*n, *l)).collect();
    required.sort();
    Handoff {
        conversation_id: cid(id),
        customer_id: "cust".into(),
        language: language.into(),
        category: "billing".into(),
        required_skills: required,
        priority,
        summary: "summary".into(),
        attributes: Default::default(),
        customer_asked_for_human: false,
        chat_reference: format!("chat://{id}"),
        preferred_agent: None,
        region: None,
        customer_location: None,
    }
}

fn offered_to(state: &PoolState, id: &str) -> Option<AgentId> {
    let c = state.view(&cid(id), Timestamp(0)).unwrap();
    (c.state == ConversationState::Offered).then(|| c.agent_id.unwrap())
}

fn offer(id: &str, attempt: u32) -> OfferId {
    OfferId {
        conversation_id: cid(id),
        attempt,
    }
}

#[test]
fn request_goes_to_longest_idle_eligible_agent() {
    let mut s = pool();
    online(&mut s, "late", &[("billing", 5)], &["en"], 1, 200);
    online(&mut s, "early", &[("billing", 5)], &["en"], 1, 100);
    online(&mut s, "novice", &[("billing", 2)], &["en"], 1, 50);
    s.request(handoff("c1", "en", &[("billing", 3)], 0), Timestamp(300))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("early")));
    s.check_invariants().unwrap();
}

#[test]
fn language_skill_and_region_rules() {
    let mut s = pool();
    online(&mut s, "de", &[("billing", 3)], &["de"], 1, 0);
    // A de-AT customer is served by a `de` speaker; an `en` one is not.
    s.request(handoff("c-en", "en", &[], 0), Timestamp(1))
        .unwrap();
    assert_eq!(offered_to(&s, "c-en"), None);
    s.request(handoff("c-de", "de-at", &[], 0), Timestamp(2))
        .unwrap();
    assert_eq!(offered_to(&s, "c-de"), Some(agent("de")));

    let mut s = pool();
    online(&mut s, "a", &[("billing", 3)], &["en"], 1, 0);
    let mut h = handoff("c-us", "en", &[], 0);
    h.region = Some("us".into());
    s.request(h, Timestamp(1)).unwrap();
    assert_eq!(offered_to(&s, "c-us"), None, "agent is allowed only in eu");
    let mut h = handoff("c-eu", "en", &[], 0);
    h.region = Some("eu".into());
    s.request(h, Timestamp(2)).unwrap();
    assert_eq!(offered_to(&s, "c-eu"), Some(agent("a")));
}

#[test]
fn no_offer_without_attached_stream() {
    let mut s = pool();
    roster(&mut s, "a", &[], &["en"], 1);
    s.go_online(&agent("a"), GoOnline::default(), false, Timestamp(0))
        .unwrap();
    s.request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), None);
    let (_, snapshot) = s.attach_stream(&agent("a"), Timestamp(2)).unwrap();
    assert_eq!(
        snapshot.offers.len(),
        1,
        "attaching the stream dispatches the waiting conversation"
    );
    s.check_invariants().unwrap();
}

#[test]
fn accept_assigns_and_complete_frees_for_next_best_waiting() {
    let mut s = pool();
    online(&mut s, "a", &[("billing", 3)], &["en"], 1, 0);
    s.request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    s.request(handoff("low", "en", &[], 0), Timestamp(2))
        .unwrap();
    s.request(handoff("high", "en", &[("billing", 1)], 5), Timestamp(3))
        .unwrap();
    let c = s
        .accept(&agent("a"), &offer("c1", 1), Timestamp(4))
        .unwrap();
    assert_eq!(c.state, ConversationState::Assigned);
    // Repeated accept: the first result.
    assert_eq!(
        s.accept(&agent("a"), &offer("c1", 1), Timestamp(5))
            .unwrap()
            .state,
        ConversationState::Assigned
    );
    assert_eq!(s.view(&cid("low"), Timestamp(5)).unwrap().queue_position, 0);
    let done = s
        .complete(&agent("a"), &cid("c1"), "resolved", Timestamp(10))
        .unwrap();
    assert_eq!(done.state, ConversationState::Completed);
    assert_eq!(
        offered_to(&s, "high"),
        Some(agent("a")),
        "higher priority first"
    );
    assert!(
        s.complete(&agent("a"), &cid("c1"), "resolved", Timestamp(11))
            .is_ok(),
        "repeat"
    );
    s.check_invariants().unwrap();
    let shift = &s.shift_stats(Timestamp(12))[0];
    assert_eq!(
        (
            shift.shift.offers,
            shift.shift.accepted,
            shift.shift.completed
        ),
        (2, 1, 1)
    );
    assert_eq!(shift.shift.handle_ms_total, 6);
}

#[test]
fn decline_goes_to_next_agent_and_excludes() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    online(&mut s, "b", &[], &["en"], 1, 10);
    s.request(handoff("c1", "en", &[], 0), Timestamp(20))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("a")));
    s.decline(&agent("a"), &offer("c1", 1), "busy", Timestamp(21))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("b")));
    s.decline(&agent("a"), &offer("c1", 1), "busy", Timestamp(22))
        .unwrap();
    s.decline(&agent("b"), &offer("c1", 2), "", Timestamp(23))
        .unwrap();
    let c = s.view(&cid("c1"), Timestamp(24)).unwrap();
    assert_eq!(
        c.state,
        ConversationState::Queued,
        "nobody left who has not declined"
    );
    assert!(c.reason.starts_with("declined"));
    s.check_invariants().unwrap();
}

#[test]
fn offers_are_personal_and_stale_ids_refused() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    online(&mut s, "b", &[], &["en"], 1, 10);
    s.request(handoff("c1", "en", &[], 0), Timestamp(20))
        .unwrap();
    let err = s
        .accept(&agent("b"), &offer("c1", 1), Timestamp(21))
        .unwrap_err();
    assert!(matches!(err, DomainError::PermissionDenied(_)), "{err}");
    let err = s
        .accept(&agent("a"), &offer("c1", 7), Timestamp(21))
        .unwrap_err();
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
}

#[test]
fn timeout_requeues_and_three_misses_put_agent_away() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    for (i, id) in ["c1", "c2", "c3"].into_iter().enumerate() {
        let t = (i as i64) * 100_000;
        s.request(handoff(id, "en", &[], 0), Timestamp(t + 1))
            .unwrap();
        s.offer_delivered(&agent("a"), &offer(id, 1));
        s.heartbeat(&agent("a"), None, Timestamp(t + 15_000))
            .unwrap();
        s.sweep(Timestamp(t + 25_000));
        let c = s.view(&cid(id), Timestamp(t + 25_000)).unwrap();
        assert_eq!(c.reason, "offer timed out");
        s.heartbeat(&agent("a"), None, Timestamp(t + 40_000))
            .unwrap();
        s.heartbeat(&agent("a"), None, Timestamp(t + 70_000))
            .unwrap();
    }
    let presence = s.presence(&agent("a")).unwrap();
    assert_eq!(presence.status, AgentStatus::Away);
    assert_eq!(presence.away_reason, "missed_offers");
    let events = s.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Notice { code, .. } if code == "missed_offers"))
    );
    assert_eq!(s.shift_stats(Timestamp(0))[0].shift.missed, 3);
    s.check_invariants().unwrap();
}

#[test]
fn undelivered_offer_is_withdrawn_without_a_miss() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    s.request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    s.sweep(Timestamp(1_001));
    let c = s.view(&cid("c1"), Timestamp(1_001)).unwrap();
    assert_eq!(c.state, ConversationState::Queued);
    assert_eq!(c.reason, "offer not delivered");
    assert!(c.excluded.is_empty(), "not the agent's miss");
    assert_eq!(s.shift_stats(Timestamp(0))[0].shift.missed, 0);
    assert!(!s.presence(&agent("a")).unwrap().stream_attached);
    // Resubscribing makes the agent offerable again; the same conversation returns.
    s.attach_stream(&agent("a"), Timestamp(2_000)).unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("a")));
    s.check_invariants().unwrap();
}

#[test]
fn lease_lapse_requeues_assigned_work_with_reason() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    s.request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    s.accept(&agent("a"), &offer("c1", 1), Timestamp(2))
        .unwrap();
    s.heartbeat(&agent("a"), None, Timestamp(20_000)).unwrap();
    s.sweep(Timestamp(40_000));
    assert!(s.presence(&agent("a")).is_some(), "lease renewed at 20 s");
    s.sweep(Timestamp(50_000));
    assert!(s.presence(&agent("a")).is_none());
    let c = s.view(&cid("c1"), Timestamp(50_000)).unwrap();
    assert_eq!(
        (c.state, c.reason.as_str()),
        (ConversationState::Queued, "agent lost")
    );
    s.check_invariants().unwrap();
}

#[test]
fn cancel_while_queued_offered_and_after_end() {
    let mut s = pool();
    s.request(handoff("q", "en", &[], 0), Timestamp(1)).unwrap();
    assert_eq!(
        s.cancel(&cid("q"), "left", Timestamp(2)).unwrap().state,
        ConversationState::Abandoned
    );
    online(&mut s, "a", &[], &["en"], 1, 0);
    s.request(handoff("o", "en", &[], 0), Timestamp(3)).unwrap();
    assert_eq!(offered_to(&s, "o"), Some(agent("a")));
    s.take_events();
    let c = s.cancel(&cid("o"), "", Timestamp(4)).unwrap();
    assert_eq!(c.state, ConversationState::Abandoned);
    let events = s.take_events();
    assert!(events.iter().any(
        |e| matches!(e.kind, EventKind::OfferRevoked { .. }) && e.agent_id == Some(agent("a"))
    ));
    assert!(s.presence(&agent("a")).unwrap().pending_offer.is_none());
    // After a terminal state, cancel returns the outcome, not an error.
    assert_eq!(
        s.cancel(&cid("o"), "again", Timestamp(5)).unwrap().reason,
        "cancelled by gateway"
    );
    s.check_invariants().unwrap();
}

#[test]
fn idempotent_request_and_conflict_names_the_field() {
    let mut s = pool();
    let (_, created) = s
        .request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    assert!(created);
    let (again, created) = s
        .request(handoff("c1", "en", &[], 0), Timestamp(2))
        .unwrap();
    assert!(!created);
    assert_eq!(again.created_at, Timestamp(1));
    let err = s
        .request(handoff("c1", "en", &[], 3), Timestamp(3))
        .unwrap_err();
    assert_eq!(
        err,
        DomainError::Conflict {
            conversation_id: "c1".into(),
            field: "priority".into()
        }
    );
}

#[test]
fn max_wait_expires_with_reason() {
    let mut s = pool();
    s.request(handoff("c1", "en", &[], 0), Timestamp(0))
        .unwrap();
    s.sweep(Timestamp(600_000));
    let c = s.view(&cid("c1"), Timestamp(600_000)).unwrap();
    assert_eq!(c.state, ConversationState::Expired);
    assert_eq!(c.reason, "no agent within the maximum wait");
    assert_eq!(s.queue_stats(Timestamp(600_000)).total_queued, 0);
}

#[test]
fn narrowing_is_allowed_widening_refused() {
    let mut s = pool();
    roster(&mut s, "a", &[("billing", 3)], &["en", "de"], 2);
    let narrow = GoOnline {
        skills: vec![Skill::new("billing", 2)],
        languages: vec!["de".into()],
        capacity: Some(1),
        location: None,
    };
    let p = s
        .go_online(&agent("a"), narrow, false, Timestamp(0))
        .unwrap();
    assert_eq!(
        (p.capacity, p.languages.clone()),
        (1, vec!["de".to_owned()])
    );
    for (request, field) in [
        (
            GoOnline {
                skills: vec![Skill::new("billing", 4)],
                ..Default::default()
            },
            "skills[0].level",
        ),
        (
            GoOnline {
                skills: vec![Skill::new("fraud", 1)],
                ..Default::default()
            },
            "skills[0]",
        ),
        (
            GoOnline {
                languages: vec!["fr".into()],
                ..Default::default()
            },
            "languages[0]",
        ),
        (
            GoOnline {
                capacity: Some(3),
                ..Default::default()
            },
            "capacity",
        ),
    ] {
        let err = s
            .go_online(&agent("a"), request, false, Timestamp(1))
            .unwrap_err();
        assert!(
            matches!(&err, DomainError::PermissionDenied(m) if m.contains(field)),
            "{field}: {err}"
        );
    }
    let err = s
        .go_online(&agent("ghost"), GoOnline::default(), false, Timestamp(1))
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }));
    s.go_online(&agent("ghost"), GoOnline::default(), true, Timestamp(1))
        .unwrap();
}

#[test]
fn free_agent_looks_only_at_groups_it_serves_and_skips_excluded() {
    let mut s = pool();
    online(&mut s, "a", &[("billing", 2)], &["en"], 1, 0);
    s.set_status(
        &agent("a"),
        StatusChoice::Away {
            reason: "break".into(),
        },
        Timestamp(1),
    )
    .unwrap();
    s.request(handoff("expert", "en", &[("billing", 5)], 9), Timestamp(2))
        .unwrap();
    s.request(handoff("french", "fr", &[], 9), Timestamp(3))
        .unwrap();
    s.request(handoff("ok", "en", &[("billing", 1)], 0), Timestamp(4))
        .unwrap();
    s.set_status(&agent("a"), StatusChoice::Available, Timestamp(5))
        .unwrap();
    assert_eq!(offered_to(&s, "ok"), Some(agent("a")));
    s.check_invariants().unwrap();
}

// ------------------------------------------------------------ property tests

/// What a free agent takes, found the plain way: every waiting conversation
/// in a group of one of its languages whose first skill it has (or that
/// needs none), that it serves and may take, ranked as the engine ranks
/// them (effective priority, then waiting time, then arrival).
fn best_waiting_by_scan(
    s: &PoolState,
    agent_id: &AgentId,
    now: Timestamp,
) -> Option<ConversationId> {
    let session = s.session(agent_id)?;
    let roster = s.roster.get(agent_id)?;
    let primaries: Vec<&str> = session
        .languages
        .iter()
        .map(|l| primary_subtag(l))
        .collect();
    s.queued
        .iter()
        .filter(|(id, (key, _))| {
            let on_shelf = primaries.contains(&primary_subtag(&key.language))
                && key
                    .skills
                    .first()
                    .is_none_or(|first| session.skill_level(&first.name).is_some());
            let c = &s.conversations[*id];
            on_shelf
                && serves(session, roster, key)
                && !c.excluded.contains(agent_id)
                && !s.reserved_for_another(id, agent_id, now)
        })
        .map(|(_, (key, queue_key))| {
            let aging = key.routed.as_ref().map(|r| r.aging).unwrap_or_default();
            let waited = now.millis_since(queue_key.queued_since);
            (
                Reverse(aging.effective(queue_key.priority.0, waited)),
                queue_key.queued_since,
                queue_key.arrival,
                queue_key.conversation_id.clone(),
            )
        })
        .min()
        .map(|(_, _, _, id)| id)
}

/// Every online agent, whatever its status, would take what the plain scan
/// finds (the engine walks group heads and stops early).
fn check_best_waiting(s: &PoolState, now: Timestamp) -> Result<(), String> {
    for (agent_id, record) in &s.agents {
        let (Some(session), Some(roster)) = (&record.session, s.roster.get(agent_id)) else {
            continue;
        };
        let engine = s.best_waiting_for(agent_id, session, roster, now);
        let scan = best_waiting_by_scan(s, agent_id, now);
        if engine != scan {
            return Err(format!(
                "agent {agent_id}: engine picks {engine:?}, a full scan {scan:?}"
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    Online(usize),
    Attach(usize),
    Detach(usize),
    Offline(usize),
    Heartbeat(usize),
    Away(usize),
    Available(usize),
    Request(usize),
    Accept(usize),
    Decline(usize),
    Complete(usize),
    Cancel(usize),
    Delivered(usize),
    Drain(usize),
    Reassign(usize, Option<usize>),
    Transfer(usize, Option<usize>),
    Csat(usize, u8),
    Advance(i64),
}

const AGENTS: usize = 5;
const CONVERSATIONS: usize = 12;
const LANGS: [&str; 3] = ["en", "de", "de-at"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..AGENTS).prop_map(Op::Online),
        (0..AGENTS).prop_map(Op::Attach),
        (0..AGENTS).prop_map(Op::Detach),
        (0..AGENTS).prop_map(Op::Offline),
        (0..AGENTS).prop_map(Op::Heartbeat),
        (0..AGENTS).prop_map(Op::Away),
        (0..AGENTS).prop_map(Op::Available),
        (0..CONVERSATIONS).prop_map(Op::Request),
        (0..AGENTS).prop_map(Op::Accept),
        (0..AGENTS).prop_map(Op::Decline),
        (0..CONVERSATIONS).prop_map(Op::Complete),
        (0..CONVERSATIONS).prop_map(Op::Cancel),
        (0..AGENTS).prop_map(Op::Delivered),
        (0..AGENTS).prop_map(Op::Drain),
        (0..CONVERSATIONS, proptest::option::of(0..AGENTS)).prop_map(|(c, a)| Op::Reassign(c, a)),
        (0..CONVERSATIONS, proptest::option::of(0..AGENTS)).prop_map(|(c, a)| Op::Transfer(c, a)),
        (0..CONVERSATIONS, 1u8..=5).prop_map(|(c, score)| Op::Csat(c, score)),
        (1i64..40_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every step: no agent over capacity, no conversation held by two
    /// agents, every conversation in exactly one state and place, and no
    /// conversation lost (each requested one is still known or finished).
    #[test]
    fn invariants_hold_under_random_operations(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = PoolState::new(PoolId::parse("pool", "p").unwrap(), DispatchSettings {
            offer_timeout_ms: 5_000, lease_ms: 30_000, max_wait_ms: 120_000, retention_ms: 10_000_000, wrap_up_ms: 3_000,
            ..DispatchSettings::default()
        });
        for i in 0..AGENTS {
            let skills = [("billing", (i % 5 + 1) as u8), ("fraud", 3)];
            roster(&mut s, &format!("a{i}"), &skills[..1 + i % 2], &["en", "de"][..1 + i % 2], 1 + (i as u32 % 3));
        }
        let mut now = 0i64;
        let mut streams: HashMap<usize, u64> = HashMap::new();
        let mut requested: HashSet<usize> = HashSet::new();
        for op in ops {
            let t = Timestamp(now);
            match op {
                Op::Online(a) => { let _ = s.go_online(&agent(&format!("a{a}")), GoOnline::default(), false, t); }
                Op::Attach(a) => if let Ok((id, _)) = s.attach_stream(&agent(&format!("a{a}")), t) { streams.insert(a, id); },
                Op::Detach(a) => if let Some(id) = streams.remove(&a) { s.detach_stream(&agent(&format!("a{a}")), id, t); },
                Op::Offline(a) => { s.go_offline(&agent(&format!("a{a}")), "agent went offline", t); }
                Op::Heartbeat(a) => { let _ = s.heartbeat(&agent(&format!("a{a}")), None, t); }
                Op::Away(a) => { let _ = s.set_status(&agent(&format!("a{a}")), StatusChoice::Away { reason: "break".into() }, t); }
                Op::Available(a) => { let _ = s.set_status(&agent(&format!("a{a}")), StatusChoice::Available, t); }
                Op::Request(c) => {
                    // The payload is a function of the id, so repeats are idempotent.
                    let skills: &[(&str, u8)] = if c % 3 == 0 { &[("billing", 2)] } else { &[] };
                    let h = handoff(&format!("c{c}"), LANGS[c % LANGS.len()], skills, (c % 3) as u8);
                    s.request(h, t).unwrap();
                    requested.insert(c);
                }
                Op::Accept(a) | Op::Decline(a) | Op::Delivered(a) => {
                    let id = agent(&format!("a{a}"));
                    if let Some(offer) = s.presence(&id).and_then(|p| p.pending_offer) {
                        match op {
                            Op::Accept(_) => { let _ = s.accept(&id, &offer, t); }
                            Op::Decline(_) => { s.decline(&id, &offer, "no", t).unwrap(); }
                            _ => s.offer_delivered(&id, &offer),
                        }
                    }
                }
                Op::Complete(c) => {
                    if let Ok(view) = s.view(&cid(&format!("c{c}")), t)
                        && let (ConversationState::Assigned, Some(holder)) = (view.state, view.agent_id) {
                            s.complete(&holder, &view.handoff.conversation_id, "done", t).unwrap();
                        }
                }
                Op::Cancel(c) => { let _ = s.cancel(&cid(&format!("c{c}")), "", t); }
                Op::Drain(a) => { let _ = s.drain(&agent(&format!("a{a}")), t); }
                Op::Reassign(c, a) => {
                    let target = a.map(|a| agent(&format!("a{a}")));
                    let _ = s.reassign(&cid(&format!("c{c}")), target.as_ref(), "supervisor", t);
                }
                Op::Transfer(c, a) => {
                    if let Ok(view) = s.view(&cid(&format!("c{c}")), t)
                        && let Some(holder) = view.agent_id {
                            let target = match a {
                                Some(a) => TransferTarget::Agent(agent(&format!("a{a}"))),
                                None => TransferTarget::Queue {
                                    category: "fraud".into(),
                                    required_skills: vec![Skill::new("fraud", 2)],
                                    language: None,
                                },
                            };
                            let _ = s.transfer(&holder, &view.handoff.conversation_id, target, "note", None, t);
                        }
                }
                Op::Csat(c, score) => { let _ = s.report_csat(&cid(&format!("c{c}")), score, t); }
                Op::Advance(ms) => { now += ms; s.sweep(Timestamp(now)); }
            }
            s.take_events();
            prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
            prop_assert!(check_best_waiting(&s, Timestamp(now)).is_ok(), "{:?}", check_best_waiting(&s, Timestamp(now)));
            for c in &requested {
                prop_assert!(s.view(&cid(&format!("c{c}")), Timestamp(now)).is_ok(), "conversation c{} lost", c);
            }
        }
    }
}

#[test]
fn drain_takes_no_new_offers_and_goes_offline_after_the_last_conversation() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 2, 0);
    s.request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    s.accept(&agent("a"), &offer("c1", 1), Timestamp(2))
        .unwrap();
    assert!(
        !s.drain(&agent("a"), Timestamp(3)).unwrap(),
        "still holds c1"
    );
    assert_eq!(
        s.presence(&agent("a")).unwrap().status,
        AgentStatus::Draining
    );
    s.request(handoff("c2", "en", &[], 0), Timestamp(4))
        .unwrap();
    assert_eq!(offered_to(&s, "c2"), None, "no new offers while draining");
    s.complete(&agent("a"), &cid("c1"), "done", Timestamp(5))
        .unwrap();
    assert!(s.presence(&agent("a")).is_none(), "offline once drained");
    s.check_invariants().unwrap();
    // Draining with nothing in hand is immediate.
    online(&mut s, "b", &[], &["fr"], 1, 10);
    assert!(s.drain(&agent("b"), Timestamp(11)).unwrap());
}

#[test]
fn wrap_up_holds_offers_until_it_ends_or_the_app_ends_it() {
    let mut s = PoolState::new(
        PoolId::parse("pool", "test").unwrap(),
        DispatchSettings {
            wrap_up_ms: 5_000,
            ..DispatchSettings::default()
        },
    );
    online(&mut s, "a", &[], &["en"], 1, 0);
    s.request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    s.accept(&agent("a"), &offer("c1", 1), Timestamp(2))
        .unwrap();
    s.complete(&agent("a"), &cid("c1"), "done", Timestamp(3))
        .unwrap();
    assert_eq!(s.presence(&agent("a")).unwrap().status, AgentStatus::WrapUp);
    s.request(handoff("c2", "en", &[], 0), Timestamp(4))
        .unwrap();
    assert_eq!(offered_to(&s, "c2"), None, "in wrap-up");
    s.sweep(Timestamp(5_003));
    assert_eq!(
        offered_to(&s, "c2"),
        Some(agent("a")),
        "wrap-up ended: offered"
    );
    s.accept(&agent("a"), &offer("c2", 1), Timestamp(5_004))
        .unwrap();
    s.complete(&agent("a"), &cid("c2"), "done", Timestamp(5_005))
        .unwrap();
    s.request(handoff("c3", "en", &[], 0), Timestamp(5_006))
        .unwrap();
    s.set_status(&agent("a"), StatusChoice::Available, Timestamp(5_007))
        .unwrap();
    assert_eq!(
        offered_to(&s, "c3"),
        Some(agent("a")),
        "the app ended wrap-up early"
    );
    s.check_invariants().unwrap();
}

#[test]
fn supervisor_reassigns_to_the_queue_or_to_a_named_agent() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    online(&mut s, "b", &[], &["en"], 1, 10);
    s.request(handoff("c1", "en", &[], 0), Timestamp(20))
        .unwrap();
    s.accept(&agent("a"), &offer("c1", 1), Timestamp(21))
        .unwrap();
    s.take_events();
    let c = s
        .reassign(&cid("c1"), None, "customer asked", Timestamp(22))
        .unwrap();
    assert_eq!(c.reason, "reassigned by supervisor: customer asked");
    assert_eq!(
        offered_to(&s, "c1"),
        Some(agent("b")),
        "back to the queue, then the next agent"
    );
    let events = s.take_events();
    assert!(
        events.iter().any(|e| matches!(e.kind, EventKind::Requeued { .. }) && e.agent_id == Some(agent("a"))),
        "the agent who held it is told"
    );
    // To a named agent: b has the offer; move it to a (who is free again).
    s.reassign(
        &cid("c1"),
        Some(&agent("a")),
        "back to alice",
        Timestamp(23),
    )
    .unwrap();
    assert_eq!(
        offered_to(&s, "c1"),
        Some(agent("a")),
        "the supervisor's pick gets the offer"
    );
    let err = s
        .reassign(&cid("c1"), Some(&agent("a")), "", Timestamp(24))
        .unwrap_err();
    assert!(
        matches!(err, DomainError::FailedPrecondition(_)),
        "a already holds it: {err}"
    );
    s.check_invariants().unwrap();
    let err = s
        .reassign(&cid("nope"), None, "", Timestamp(24))
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }));
}

#[test]
fn availability_counts_eligible_free_agents() {
    let mut s = pool();
    online(&mut s, "a", &[("billing", 4)], &["en"], 1, 0);
    online(&mut s, "b", &[("billing", 2)], &["en"], 1, 0);
    let (available, wait) =
        s.availability(&handoff("x", "en", &[("billing", 3)], 0), 100, Timestamp(1));
    assert_eq!((available, wait), (1, 0));
    let (available, _) = s.availability(&handoff("x", "fr", &[], 0), 100, Timestamp(1));
    assert_eq!(available, 0);
}

#[test]
fn agent_transfers_to_a_queue_or_a_colleague_with_the_context() {
    let mut s = pool();
    online(&mut s, "first", &[("billing", 3)], &["en"], 1, 0);
    online(&mut s, "fraud", &[("fraud", 4)], &["en"], 1, 10);
    online(&mut s, "other", &[("billing", 3)], &["en"], 1, 20);
    s.request(handoff("c1", "en", &[("billing", 2)], 0), Timestamp(30))
        .unwrap();
    s.accept(&agent("first"), &offer("c1", 1), Timestamp(31))
        .unwrap();
    s.take_events();

    // Only the holder may transfer; not to itself.
    let err = s
        .transfer(
            &agent("other"),
            &cid("c1"),
            TransferTarget::Agent(agent("fraud")),
            "",
            None,
            Timestamp(32),
        )
        .unwrap_err();
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
    let err = s
        .transfer(
            &agent("first"),
            &cid("c1"),
            TransferTarget::Agent(agent("first")),
            "",
            None,
            Timestamp(32),
        )
        .unwrap_err();
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");

    // To the fraud queue: only the fraud specialist is eligible.
    let c = s
        .transfer(
            &agent("first"),
            &cid("c1"),
            TransferTarget::Queue {
                category: "fraud".into(),
                required_skills: vec![Skill::new("fraud", 3)],
                language: None,
            },
            "card used abroad",
            None,
            Timestamp(33),
        )
        .unwrap();
    assert_eq!(
        c.reason,
        "transferred by agent `first` to queue:fraud: card used abroad"
    );
    assert_eq!(offered_to(&s, "c1"), Some(agent("fraud")));
    // The gateway retrying its original request is not a conflict: the
    // requirements are the transfer's now; other fields still count.
    let (_, created) = s
        .request(handoff("c1", "en", &[("billing", 2)], 0), Timestamp(33))
        .unwrap();
    assert!(!created);
    let err = s
        .request(handoff("c1", "en", &[("billing", 2)], 7), Timestamp(33))
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::Conflict { field, .. } if field == "priority"),
        "{err}"
    );
    let c = s.view(&cid("c1"), Timestamp(33)).unwrap();
    assert_eq!(c.handoff.category, "fraud");
    assert_eq!(c.handoff.summary, "summary", "the context travels");
    assert_eq!(c.transfers.len(), 1);
    assert_eq!(c.transfers[0].note, "card used abroad");
    let events = s.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Requeued { .. })
                && e.agent_id == Some(agent("first"))),
        "the transferring agent is told its part ended"
    );
    s.accept(&agent("fraud"), &offer("c1", 2), Timestamp(34))
        .unwrap();

    // To a named colleague: an offer to that agent.
    s.transfer(
        &agent("fraud"),
        &cid("c1"),
        TransferTarget::Agent(agent("other")),
        "back to billing",
        None,
        Timestamp(35),
    )
    .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("other")));
    let c = s.view(&cid("c1"), Timestamp(35)).unwrap();
    assert_eq!(c.transfers.len(), 2);
    assert!(c.excluded.contains(&agent("first")) && c.excluded.contains(&agent("fraud")));
    let shifts = s.shift_stats(Timestamp(36));
    let transfers = |id: &str| {
        shifts
            .iter()
            .find(|v| v.agent_id == agent(id))
            .unwrap()
            .shift
            .transfers
    };
    assert_eq!((transfers("first"), transfers("fraud")), (1, 1));
    s.check_invariants().unwrap();
}

#[test]
fn csat_counts_once_for_the_agent_who_completed() {
    let mut s = pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    s.request(handoff("c1", "en", &[], 0), Timestamp(1))
        .unwrap();
    let err = s.report_csat(&cid("c1"), 5, Timestamp(2)).unwrap_err();
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
    s.accept(&agent("a"), &offer("c1", 1), Timestamp(2))
        .unwrap();
    s.complete(&agent("a"), &cid("c1"), "resolved", Timestamp(3))
        .unwrap();
    let c = s.report_csat(&cid("c1"), 4, Timestamp(4)).unwrap();
    assert_eq!(c.csat, Some(4));
    // The same report again is a no-op; a different score is refused.
    s.report_csat(&cid("c1"), 4, Timestamp(5)).unwrap();
    let err = s.report_csat(&cid("c1"), 2, Timestamp(5)).unwrap_err();
    assert!(matches!(err, DomainError::FailedPrecondition(_)), "{err}");
    let view = s.shift_stats(Timestamp(6)).remove(0);
    assert_eq!((view.shift.csat_count, view.shift.csat_total), (1, 4));
    assert_eq!(view.quality.average(), Some(4.0));
    // Quality outlives the shift.
    s.go_offline(&agent("a"), "done", Timestamp(7));
    s.go_online(&agent("a"), GoOnline::default(), false, Timestamp(8))
        .unwrap();
    let view = s.shift_stats(Timestamp(9)).remove(0);
    assert_eq!(view.shift.csat_count, 0);
    assert_eq!(view.quality.csat_count, 1);
    let err = s.report_csat(&cid("nope"), 4, Timestamp(9)).unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }));
}

// ------------------------------------------------------------ routing plans

use crate::plan::{
    PlanAging, PlanMaxWait, PlanMaxWaitAction, PlanRequirements, PlanStep, PlanStrategy,
    RoutingPlan,
};

/// A pool whose leases outlast the tests' waits.
fn planned_pool() -> PoolState {
    PoolState::new(
        PoolId::parse("pool", "test").unwrap(),
        DispatchSettings {
            lease_ms: 100_000_000,
            ..DispatchSettings::default()
        },
    )
}

fn requirements(language: &str, skills: &[(&str, u8)]) -> PlanRequirements {
    let mut r = PlanRequirements::language_only(language);
    r.skills = skills.iter().map(|(n, l)| Skill::new(*n, *l)).collect();
    r.skills.sort();
    r
}

/// A plan's maximum wait that expires the conversation with `reason`.
fn expire_after(after_ms: i64, reason: &str) -> Option<PlanMaxWait> {
    Some(PlanMaxWait {
        after_ms,
        action: PlanMaxWaitAction::Expire {
            reason: reason.into(),
        },
    })
}

fn plan(steps: Vec<(i64, PlanRequirements)>) -> RoutingPlan {
    RoutingPlan {
        queue: "billing".into(),
        steps: steps
            .into_iter()
            .map(|(after_ms, requirements)| PlanStep {
                after_ms,
                requirements,
            })
            .collect(),
        ..RoutingPlan::default()
    }
}

#[test]
fn relaxation_step_regroups_and_dispatches_when_due() {
    let mut s = planned_pool();
    online(&mut s, "junior", &[("billing", 2)], &["de-de"], 1, 0);
    let p = plan(vec![
        (0, requirements("de-at", &[("billing", 4)])),
        (30_000, requirements("de-at", &[("billing", 2)])),
        (90_000, {
            let mut r = requirements("de", &[("billing", 2)]);
            r.language_widened = true;
            r
        }),
    ]);
    let h = handoff("c1", "de-at", &[], 0);
    s.request_with_plan(h, Some(p), Timestamp(0)).unwrap();
    assert_eq!(offered_to(&s, "c1"), None);
    s.sweep(Timestamp(30_000));
    // Level lowered, but the agent speaks de-de: not yet.
    assert_eq!(offered_to(&s, "c1"), None);
    s.check_invariants().unwrap();
    s.sweep(Timestamp(89_999));
    assert_eq!(offered_to(&s, "c1"), None);
    s.sweep(Timestamp(90_000));
    // Widened to the `de` family: the de-de agent is found by the family key.
    assert_eq!(offered_to(&s, "c1"), Some(agent("junior")));
    s.check_invariants().unwrap();
}

#[test]
fn free_agent_finds_a_relaxed_group() {
    let mut s = planned_pool();
    let p = plan(vec![
        (0, requirements("en", &[("billing", 4)])),
        (10_000, requirements("en", &[("billing", 1)])),
    ]);
    s.request_with_plan(handoff("c1", "en", &[], 0), Some(p), Timestamp(0))
        .unwrap();
    s.sweep(Timestamp(10_000));
    online(&mut s, "a", &[("billing", 1)], &["en"], 1, 11_000);
    assert_eq!(offered_to(&s, "c1"), Some(agent("a")));
}

#[test]
fn plan_timeouts_replace_the_pool_settings() {
    let mut s = planned_pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    let mut p = plan(vec![(0, requirements("en", &[]))]);
    p.offer_timeout_ms = Some(5_000);
    p.wrap_up_ms = Some(7_000);
    let (c, _) = s
        .request_with_plan(handoff("c1", "en", &[], 0), Some(p), Timestamp(0))
        .unwrap();
    assert_eq!(c.offers[0].deadline, Timestamp(5_000));
    s.accept(&agent("a"), &offer("c1", 1), Timestamp(1_000))
        .unwrap();
    s.complete(&agent("a"), &cid("c1"), "done", Timestamp(2_000))
        .unwrap();
    assert_eq!(s.presence(&agent("a")).unwrap().status, AgentStatus::WrapUp);
    s.sweep(Timestamp(9_000));
    assert_eq!(
        s.presence(&agent("a")).unwrap().status,
        AgentStatus::Available
    );
}

/// A conversation that reaches its maximum wait while offered is expired
/// and its offer withdrawn: the agent it was offered to is free again and
/// gets the next conversation it can serve at once (as after a cancel).
#[test]
fn an_offer_withdrawn_by_the_maximum_wait_frees_the_agent_for_the_next() {
    let mut s = planned_pool();
    online(&mut s, "alice", &[], &["en"], 1, 0);
    let mut p = plan(vec![(0, requirements("en", &[]))]);
    p.max_wait = expire_after(10_000, "closed");
    s.request_with_plan(handoff("c1", "en", &[], 0), Some(p), Timestamp(9_000))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("alice")));
    s.request(handoff("c2", "en", &[], 0), Timestamp(9_500))
        .unwrap();
    assert_eq!(offered_to(&s, "c2"), None, "alice is busy with c1's offer");
    s.offer_delivered(&agent("alice"), &offer("c1", 1));
    s.sweep(Timestamp(19_000));
    let c1 = s.view(&cid("c1"), Timestamp(19_000)).unwrap();
    assert_eq!(c1.state, ConversationState::Expired);
    assert_eq!(offered_to(&s, "c2"), Some(agent("alice")));
    s.check_invariants().unwrap();
}

#[test]
fn max_wait_actions_expire_overflow_and_callback() {
    // Expire with the queue's reason.
    let mut s = planned_pool();
    let mut p = plan(vec![(0, requirements("en", &[("billing", 3)]))]);
    p.max_wait = expire_after(60_000, "billing is closed");
    s.request_with_plan(handoff("c1", "en", &[], 0), Some(p), Timestamp(0))
        .unwrap();
    s.sweep(Timestamp(600_000 - 1));
    let c = s.view(&cid("c1"), Timestamp(600_000)).unwrap();
    assert_eq!(c.state, ConversationState::Expired);
    assert_eq!(c.reason, "billing is closed");

    // Overflow to a queue whose requirements someone meets; its clock
    // starts at the move.
    let mut s = planned_pool();
    online(&mut s, "generalist", &[], &["en"], 1, 0);
    let mut general = plan(vec![(0, requirements("en", &[]))]);
    general.queue = "general".into();
    let mut p = plan(vec![(0, requirements("en", &[("billing", 3)]))]);
    p.max_wait = Some(PlanMaxWait {
        after_ms: 60_000,
        action: PlanMaxWaitAction::Overflow {
            queue: "general".into(),
            plan: Box::new(general),
        },
    });
    s.request_with_plan(handoff("c2", "en", &[], 0), Some(p), Timestamp(0))
        .unwrap();
    assert_eq!(offered_to(&s, "c2"), None);
    s.sweep(Timestamp(60_000));
    assert_eq!(offered_to(&s, "c2"), Some(agent("generalist")));
    let c = s.view(&cid("c2"), Timestamp(60_000)).unwrap();
    assert_eq!(c.created_at, Timestamp(0));
    s.check_invariants().unwrap();
    // The old plan's maximum wait does not expire it at 600 s either.
    s.decline(&agent("generalist"), &offer("c2", 1), "", Timestamp(61_000))
        .unwrap();
    s.sweep(Timestamp(630_000));
    assert_eq!(
        s.view(&cid("c2"), Timestamp(630_000)).unwrap().state,
        ConversationState::Queued
    );
    s.sweep(Timestamp(660_000));
    assert_eq!(
        s.view(&cid("c2"), Timestamp(660_000)).unwrap().state,
        ConversationState::Expired,
        "the general queue's own (pool) maximum wait, 600 s after the move"
    );

    // Callback: stays queued at low priority, no longer expires, told why.
    let mut s = planned_pool();
    let mut p = plan(vec![(0, requirements("en", &[("billing", 3)]))]);
    p.priority = 5;
    p.max_wait = Some(PlanMaxWait {
        after_ms: 60_000,
        action: PlanMaxWaitAction::Callback {
            priority: 0,
            reason: "we will call you back".into(),
        },
    });
    s.request_with_plan(handoff("c3", "en", &[], 5), Some(p), Timestamp(0))
        .unwrap();
    s.take_events();
    s.sweep(Timestamp(60_000));
    let events = s.take_events();
    assert!(
        matches!(&events[..], [Event { kind: EventKind::Requeued { conversation }, .. }]
        if conversation.reason == "we will call you back")
    );
    s.sweep(Timestamp(10_000_000));
    let c = s.view(&cid("c3"), Timestamp(10_000_000)).unwrap();
    assert_eq!(c.state, ConversationState::Queued);
    // A later priority-1 conversation goes ahead of the callback.
    let p1 = plan(vec![(0, requirements("en", &[("billing", 3)]))]);
    s.request_with_plan(
        handoff("c4", "en", &[], 1),
        Some(RoutingPlan { priority: 1, ..p1 }),
        Timestamp(10_000_000),
    )
    .unwrap();
    online(&mut s, "b", &[("billing", 3)], &["en"], 1, 10_000_001);
    assert_eq!(offered_to(&s, "c4"), Some(agent("b")));
}

#[test]
fn preferred_agent_gets_first_offer_within_the_window() {
    let mut s = planned_pool();
    online(&mut s, "other", &[], &["en"], 1, 0);
    online(&mut s, "pref", &[], &["en"], 1, 1);
    // pref busy with an offer of another conversation.
    let mut p = plan(vec![(0, requirements("en", &[]))]);
    p.preferred_window_ms = 30_000;
    let mut h0 = handoff("c0", "en", &[], 0);
    h0.preferred_agent = Some(agent("pref"));
    s.request_with_plan(h0, Some(p.clone()), Timestamp(5))
        .unwrap();
    assert_eq!(offered_to(&s, "c0"), Some(agent("pref")));
    // Second returning customer of pref: reserved while pref is busy.
    let mut h1 = handoff("c1", "en", &[], 0);
    h1.preferred_agent = Some(agent("pref"));
    s.request_with_plan(h1, Some(p.clone()), Timestamp(10))
        .unwrap();
    assert_eq!(
        offered_to(&s, "c1"),
        None,
        "other is free but not preferred"
    );
    // `other` becoming free again does not take it either.
    s.set_status(&agent("other"), StatusChoice::Available, Timestamp(20))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), None);
    // pref declines c0 → pref is free and gets c1 at once.
    s.decline(&agent("pref"), &offer("c0", 1), "", Timestamp(1_000))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("pref")));
    assert_eq!(offered_to(&s, "c0"), Some(agent("other")));
    s.check_invariants().unwrap();

    // Window over: anyone eligible.
    let mut s = planned_pool();
    online(&mut s, "other", &[], &["en"], 1, 0);
    online(&mut s, "pref", &[], &["en"], 1, 0);
    s.set_status(
        &agent("pref"),
        StatusChoice::Away {
            reason: "break".into(),
        },
        Timestamp(0),
    )
    .unwrap();
    let mut h = handoff("c1", "en", &[], 0);
    h.preferred_agent = Some(agent("pref"));
    s.request_with_plan(h, Some(p.clone()), Timestamp(0))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), None);
    s.sweep(Timestamp(30_000));
    assert_eq!(offered_to(&s, "c1"), Some(agent("other")));

    // Preferred agent offline: no window at all.
    let mut s = planned_pool();
    online(&mut s, "other", &[], &["en"], 1, 0);
    let mut h = handoff("c1", "en", &[], 0);
    h.preferred_agent = Some(agent("pref"));
    s.request_with_plan(h, Some(p), Timestamp(0)).unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("other")));
}

#[test]
fn strategies_choose_among_eligible_agents_table() {
    // (strategy, expected agent). Agents, idle order a < b < c:
    //   a: billing 2, capacity 3 with 1 active, CSAT 3 ×10
    //   b: billing 5, capacity 1, offered most recently, CSAT none
    //   c: billing 3, capacity 2, CSAT 5 ×10
    let cases = [
        (PlanStrategy::LongestIdle, "a"),
        (PlanStrategy::LeastOccupied, "b"),
        (PlanStrategy::BestSkillMatch, "b"),
        (PlanStrategy::RoundRobin, "a"),
        (PlanStrategy::QualityWeighted, "c"),
    ];
    for (strategy, expected) in cases {
        let mut s = planned_pool();
        online(&mut s, "a", &[("billing", 2)], &["en"], 3, 0);
        online(&mut s, "b", &[("billing", 5)], &["en"], 1, 1);
        online(&mut s, "c", &[("billing", 3)], &["en"], 2, 2);
        // Give a one active conversation (capacity 3) and c none; b gets
        // and declines an offer so it was offered last.
        s.request(handoff("warm", "en", &[], 0), Timestamp(3))
            .unwrap();
        s.accept(&agent("a"), &offer("warm", 1), Timestamp(3))
            .unwrap();
        s.agents.get_mut(&agent("a")).unwrap().quality = Quality {
            csat_count: 10,
            csat_total: 30,
        };
        s.agents.get_mut(&agent("c")).unwrap().quality = Quality {
            csat_count: 10,
            csat_total: 50,
        };
        s.agents.get_mut(&agent("b")).unwrap().last_offer_seq = 100;
        s.agents.get_mut(&agent("c")).unwrap().last_offer_seq = 50;
        let mut p = plan(vec![(0, requirements("en", &[("billing", 1)]))]);
        p.strategy = strategy;
        s.request_with_plan(handoff("c1", "en", &[], 0), Some(p), Timestamp(10))
            .unwrap();
        assert_eq!(offered_to(&s, "c1"), Some(agent(expected)), "{strategy:?}");
    }
}

#[test]
fn regions_are_membership_of_resolved_sets_and_roster_table() {
    // (agent regions, roster allowed, if_listed, eligible)
    let berlin = || Some(BTreeSet::from(["berlin".to_owned()]));
    type Case = (Option<BTreeSet<String>>, Vec<&'static str>, bool, bool);
    let cases: [Case; 6] = [
        (berlin(), vec!["berlin"], false, true),
        (berlin(), vec![], false, false),
        (berlin(), vec![], true, true),
        (None, vec!["berlin"], false, false),
        (Some(BTreeSet::new()), vec!["berlin"], true, false),
        (
            Some(BTreeSet::from(["paris".to_owned()])),
            vec!["berlin", "paris"],
            false,
            false,
        ),
    ];
    for (i, (agent_regions, allowed, if_listed, expected)) in cases.into_iter().enumerate() {
        let mut s = planned_pool();
        online(&mut s, "a", &[], &["de"], 1, 0);
        s.roster.get_mut(&agent("a")).unwrap().allowed_regions =
            allowed.iter().map(|r| (*r).to_owned()).collect();
        s.set_agent_regions(&agent("a"), agent_regions, Timestamp(0))
            .unwrap();
        let mut r = requirements("de", &[]);
        r.regions = berlin();
        let mut p = plan(vec![(0, r)]);
        p.roster_regions_if_listed = if_listed;
        s.request_with_plan(handoff("c1", "de", &[], 0), Some(p), Timestamp(1))
            .unwrap();
        assert_eq!(offered_to(&s, "c1").is_some(), expected, "case {i}");
    }
    // Regions resolved later (a heartbeat with a location) dispatch at once.
    let mut s = planned_pool();
    online(&mut s, "a", &[], &["de"], 1, 0);
    s.roster.get_mut(&agent("a")).unwrap().allowed_regions = vec!["berlin".into()];
    let mut r = requirements("de", &[]);
    r.regions = berlin();
    s.request_with_plan(
        handoff("c1", "de", &[], 0),
        Some(plan(vec![(0, r)])),
        Timestamp(1),
    )
    .unwrap();
    assert_eq!(offered_to(&s, "c1"), None);
    s.set_agent_regions(&agent("a"), berlin(), Timestamp(2))
        .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("a")));
}

#[test]
fn attributes_are_hard_constraints() {
    let mut s = planned_pool();
    online(&mut s, "plain", &[], &["en"], 1, 0);
    online(&mut s, "kyc", &[], &["en"], 1, 1);
    s.roster.get_mut(&agent("kyc")).unwrap().attributes = vec!["kyc_cleared".into()];
    let mut r = requirements("en", &[]);
    r.attributes.insert("kyc_cleared".into());
    s.request_with_plan(
        handoff("c1", "en", &[], 0),
        Some(plan(vec![(0, r)])),
        Timestamp(2),
    )
    .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("kyc")));
}

#[test]
fn aging_lets_a_long_wait_beat_a_fresh_high_priority() {
    let aging = PlanAging {
        rate_micro_per_second: 100_000,
        ceiling: 9,
    };
    // (wait of the priority-0 conversation before the priority-5 one
    // arrives, which goes first)
    let cases = [
        (10_000, "high"),
        (49_000, "high"),
        (50_000, "low"),
        (200_000, "low"),
    ];
    for (wait, expected) in cases {
        let mut s = planned_pool();
        let mut p = plan(vec![(0, requirements("en", &[]))]);
        p.aging = aging;
        s.request_with_plan(handoff("low", "en", &[], 0), Some(p.clone()), Timestamp(0))
            .unwrap();
        p.priority = 5;
        s.request_with_plan(handoff("high", "en", &[], 5), Some(p), Timestamp(wait))
            .unwrap();
        online(&mut s, "a", &[], &["en"], 1, wait);
        assert_eq!(offered_to(&s, expected), Some(agent("a")), "wait {wait}");
        s.check_invariants().unwrap();
    }
}

#[test]
fn no_plan_and_an_empty_plan_route_alike_on_language_and_skills() {
    let mut s = planned_pool();
    online(&mut s, "a", &[("billing", 3)], &["en"], 1, 0);
    s.request_with_plan(
        handoff("c1", "en", &[("billing", 3)], 0),
        Some(RoutingPlan::default()),
        Timestamp(1),
    )
    .unwrap();
    assert_eq!(offered_to(&s, "c1"), Some(agent("a")));
    let (again, created) = s
        .request_with_plan(
            handoff("c1", "en", &[("billing", 3)], 0),
            None,
            Timestamp(2),
        )
        .unwrap();
    assert!(!created);
    assert_eq!(again.state, ConversationState::Offered);
}

// A loosening schedule: each step lowers levels, drops skills, widens the
// language and adds regions relative to the one before.
fn loosening_schedule() -> impl Strategy<Value = Vec<PlanRequirements>> {
    let step = (
        0u8..3,
        proptest::bool::ANY,
        proptest::bool::ANY,
        proptest::bool::ANY,
    );
    proptest::collection::vec(step, 1..5).prop_map(|changes| {
        let mut current = requirements("de-at", &[("billing", 5), ("fraud", 3)]);
        current.regions = Some(BTreeSet::from(["berlin".to_owned()]));
        let mut out = vec![current.clone()];
        for (lower_by, drop_fraud, widen, add_region) in changes {
            if let Some(s) = current.skills.iter_mut().find(|s| s.name == "billing") {
                s.level = s.level.saturating_sub(lower_by).max(1);
            }
            if drop_fraud {
                current.skills.retain(|s| s.name != "fraud");
            }
            if widen {
                current.language = "de".into();
                current.language_widened = true;
            }
            if add_region && let Some(regions) = &mut current.regions {
                regions.insert("germany".into());
            }
            out.push(current.clone());
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Relaxation is monotone: an agent eligible at one step of a loosening
    /// schedule is eligible at every later step.
    #[test]
    fn relaxation_keeps_eligible_agents_eligible(
        schedule in loosening_schedule(),
        level in 1u8..=5,
        fraud in proptest::option::of(1u8..=5),
        language in proptest::sample::select(vec!["de", "de-at", "de-de", "en"]),
        located in proptest::sample::select(vec![vec![], vec!["berlin"], vec!["germany"], vec!["berlin", "germany"]]),
        if_listed in proptest::bool::ANY,
    ) {
        let mut skills = vec![Skill::new("billing", level)];
        if let Some(f) = fraud { skills.push(Skill::new("fraud", f)); }
        let languages = vec![language.to_owned()];
        let regions: BTreeSet<String> = located.iter().map(|r| (*r).to_owned()).collect();
        let entry = RosterEntry {
            agent_id: agent("a"),
            display_name: "a".into(),
            skills: skills.clone(),
            languages: languages.clone(),
            max_capacity: 1,
            allowed_regions: vec!["berlin".into(), "germany".into()],
            attributes: vec![],
            token_epoch: 0,
        };
        let mut was = false;
        for step in &schedule {
            let now = plan_eligible(step, if_listed, &skills, &languages, Some(&regions), &entry);
            prop_assert!(!was || now, "eligible before, not at {step:?}");
            was = now;
        }
    }
}

#[derive(Clone, Debug)]
enum PlannedOp {
    Base(Op),
    Planned(usize),
    Regions(usize, bool),
}

fn planned_op() -> impl Strategy<Value = PlannedOp> {
    prop_oneof![
        6 => op().prop_map(PlannedOp::Base),
        2 => (0..CONVERSATIONS).prop_map(PlannedOp::Planned),
        1 => (0..AGENTS, proptest::bool::ANY).prop_map(|(a, b)| PlannedOp::Regions(a, b)),
    ]
}

/// The plan of conversation `c` in the planned property test: a function
/// of the id, mixing every feature.
fn test_plan(c: usize) -> RoutingPlan {
    let mut start = requirements(LANGS[c % LANGS.len()], &[("billing", 5)]);
    if c.is_multiple_of(2) {
        start.regions = Some(BTreeSet::from(["berlin".to_owned()]));
    }
    let mut lowered = start.clone();
    lowered.skills = vec![Skill::new("billing", 2)];
    let mut widened = lowered.clone();
    widened.language = primary_subtag(&widened.language).to_owned();
    widened.language_widened = true;
    widened.skills.clear();
    widened.regions = None;
    let strategies = [
        PlanStrategy::LongestIdle,
        PlanStrategy::LeastOccupied,
        PlanStrategy::BestSkillMatch,
        PlanStrategy::RoundRobin,
        PlanStrategy::QualityWeighted,
    ];
    let action = match c % 3 {
        0 => PlanMaxWaitAction::Expire {
            reason: "closed".into(),
        },
        1 => PlanMaxWaitAction::Callback {
            priority: 0,
            reason: "callback".into(),
        },
        _ => PlanMaxWaitAction::Overflow {
            queue: "general".into(),
            plan: Box::new(plan(vec![(0, requirements("en", &[]))])),
        },
    };
    RoutingPlan {
        queue: "q".into(),
        priority: (c % 4) as u8,
        steps: vec![
            PlanStep {
                after_ms: 0,
                requirements: start,
            },
            PlanStep {
                after_ms: 10_000,
                requirements: lowered,
            },
            PlanStep {
                after_ms: 30_000,
                requirements: widened,
            },
        ],
        strategy: strategies[c % strategies.len()],
        aging: PlanAging {
            rate_micro_per_second: if c.is_multiple_of(2) { 200_000 } else { 0 },
            ceiling: 9,
        },
        offer_timeout_ms: Some(3_000 + (c as i64 % 3) * 1_000),
        wrap_up_ms: Some((c as i64 % 2) * 2_000),
        max_wait: Some(PlanMaxWait {
            after_ms: 50_000,
            action,
        }),
        preferred_window_ms: if c.is_multiple_of(3) { 15_000 } else { 0 },
        roster_regions_if_listed: c % 4 == 1,
        misses_before_away: Some(1 + (c as u32 % 2)),
        reject_delay_ms: (c as i64 % 2) * 4_000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The invariants hold with planned conversations (relaxation steps,
    /// strategies, aging, preferred windows, regions, max-wait actions)
    /// mixed with unplanned ones under random operations.
    #[test]
    fn invariants_hold_with_routing_plans(ops in proptest::collection::vec(planned_op(), 1..150)) {
        let mut s = PoolState::new(PoolId::parse("pool", "p").unwrap(), DispatchSettings {
            offer_timeout_ms: 5_000, lease_ms: 30_000, max_wait_ms: 120_000, retention_ms: 10_000_000, wrap_up_ms: 3_000,
            ..DispatchSettings::default()
        });
        for i in 0..AGENTS {
            let skills = [("billing", (i % 5 + 1) as u8), ("fraud", 3)];
            roster(&mut s, &format!("a{i}"), &skills[..1 + i % 2], [["en"].as_slice(), &["de"], &["de-at", "en"]][i % 3], 1 + (i as u32 % 3));
        }
        let mut now = 0i64;
        let mut streams: HashMap<usize, u64> = HashMap::new();
        let mut requested: HashSet<usize> = HashSet::new();
        for op in ops {
            let t = Timestamp(now);
            match op {
                PlannedOp::Planned(c) => {
                    let mut h = handoff(&format!("c{c}"), LANGS[c % LANGS.len()], &[], (c % 4) as u8);
                    if c.is_multiple_of(3) { h.preferred_agent = Some(agent(&format!("a{}", c % AGENTS))); }
                    s.request_with_plan(h, Some(test_plan(c)), t).unwrap();
                    requested.insert(c + CONVERSATIONS);
                }
                PlannedOp::Regions(a, inside) => {
                    let regions = inside.then(|| BTreeSet::from(["berlin".to_owned()]));
                    let _ = s.set_agent_regions(&agent(&format!("a{a}")), regions, t);
                }
                PlannedOp::Base(op) => match op {
                    Op::Online(a) => { let _ = s.go_online(&agent(&format!("a{a}")), GoOnline::default(), false, t); }
                    Op::Attach(a) => if let Ok((id, _)) = s.attach_stream(&agent(&format!("a{a}")), t) { streams.insert(a, id); },
                    Op::Detach(a) => if let Some(id) = streams.remove(&a) { s.detach_stream(&agent(&format!("a{a}")), id, t); },
                    Op::Offline(a) => { s.go_offline(&agent(&format!("a{a}")), "agent went offline", t); }
                    Op::Heartbeat(a) => { let _ = s.heartbeat(&agent(&format!("a{a}")), None, t); }
                    Op::Away(a) => { let _ = s.set_status(&agent(&format!("a{a}")), StatusChoice::Away { reason: "break".into() }, t); }
                    Op::Available(a) => { let _ = s.set_status(&agent(&format!("a{a}")), StatusChoice::Available, t); }
                    Op::Request(c) => {
                        // Unplanned ids are disjoint from planned ones.
                        let h = handoff(&format!("u{c}"), LANGS[c % LANGS.len()], &[], (c % 3) as u8);
                        s.request(h, t).unwrap();
                    }
                    Op::Accept(a) | Op::Decline(a) | Op::Delivered(a) => {
                        let id = agent(&format!("a{a}"));
                        if let Some(offer) = s.presence(&id).and_then(|p| p.pending_offer) {
                            match op {
                                Op::Accept(_) => { let _ = s.accept(&id, &offer, t); }
                                Op::Decline(_) => { s.decline(&id, &offer, "no", t).unwrap(); }
                                _ => s.offer_delivered(&id, &offer),
                            }
                        }
                    }
                    Op::Complete(c) | Op::Csat(c, _) | Op::Cancel(c) | Op::Reassign(c, _) | Op::Transfer(c, _) => {
                        let id = cid(&format!("c{c}"));
                        match op {
                            Op::Complete(_) => if let Ok(view) = s.view(&id, t)
                                && let (ConversationState::Assigned, Some(holder)) = (view.state, view.agent_id) {
                                    s.complete(&holder, &id, "done", t).unwrap();
                                },
                            Op::Csat(_, score) => { let _ = s.report_csat(&id, score, t); }
                            Op::Cancel(_) => { let _ = s.cancel(&id, "", t); }
                            Op::Reassign(_, a) => {
                                let target = a.map(|a| agent(&format!("a{a}")));
                                let _ = s.reassign(&id, target.as_ref(), "supervisor", t);
                            }
                            Op::Transfer(_, a) => if let Ok(view) = s.view(&id, t) && let Some(holder) = view.agent_id {
                                let target = match a {
                                    Some(a) => TransferTarget::Agent(agent(&format!("a{a}"))),
                                    None => TransferTarget::Queue { category: "fraud".into(), required_skills: vec![Skill::new("fraud", 2)], language: None },
                                };
                                // Half the transfers to a queue carry its plan.
                                let plan = c.is_multiple_of(2).then(|| test_plan(c + 1));
                                let _ = s.transfer(&holder, &id, target, "note", plan, t);
                            },
                            _ => {}
                        }
                    }
                    Op::Drain(a) => { let _ = s.drain(&agent(&format!("a{a}")), t); }
                    Op::Advance(ms) => { now += ms; s.sweep(Timestamp(now)); }
                },
            }
            s.take_events();
            prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
            prop_assert!(check_best_waiting(&s, Timestamp(now)).is_ok(), "{:?}", check_best_waiting(&s, Timestamp(now)));
            for c in &requested {
                let id = cid(&format!("c{}", c - CONVERSATIONS));
                prop_assert!(s.view(&id, Timestamp(now)).is_ok(), "conversation {} lost", id);
            }
            // A queued planned conversation past its last step with a free
            // eligible agent would have been offered: check no agent that
            // is offerable and eligible sits beside it (outside preferred
            // windows).
            for c in 0..CONVERSATIONS {
                let id = cid(&format!("c{c}"));
                let Some(routed) = s.routing.get(&id) else { continue };
                let Some(conv) = s.conversations.get(&id) else { continue };
                if conv.state != ConversationState::Queued || routed.preferred_window_open(Timestamp(now)) { continue; }
                for (a, record) in &s.agents {
                    if let Some(session) = &record.session
                        && session.offerable()
                        && s.planned_fits(a, conv, routed) {
                            prop_assert!(false, "{id} queued while {a} is free and eligible");
                        }
                }
            }
        }
    }
}

#[test]
fn plan_penalties_reject_delay_and_misses_before_away() {
    let mut s = planned_pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    let mut p = plan(vec![(0, requirements("en", &[]))]);
    p.reject_delay_ms = 10_000;
    p.misses_before_away = Some(1);
    s.request_with_plan(handoff("c1", "en", &[], 0), Some(p.clone()), Timestamp(0))
        .unwrap();
    s.decline(&agent("a"), &offer("c1", 1), "", Timestamp(1_000))
        .unwrap();
    // In the reject delay: a new conversation waits for it.
    s.request_with_plan(
        handoff("c2", "en", &[], 0),
        Some(p.clone()),
        Timestamp(2_000),
    )
    .unwrap();
    assert_eq!(offered_to(&s, "c2"), None);
    s.check_invariants().unwrap();
    s.sweep(Timestamp(10_999));
    assert_eq!(offered_to(&s, "c2"), None);
    s.sweep(Timestamp(11_000));
    assert_eq!(offered_to(&s, "c2"), Some(agent("a")));
    // One miss of a conversation whose plan says 1 puts the agent away.
    s.offer_delivered(&agent("a"), &offer("c2", 1));
    s.sweep(Timestamp(11_000 + 20_000));
    assert_eq!(s.presence(&agent("a")).unwrap().status, AgentStatus::Away);
    // Without a plan, decline has no delay (the built-in rule).
    let mut s = planned_pool();
    online(&mut s, "a", &[], &["en"], 1, 0);
    s.request(handoff("c1", "en", &[], 0), Timestamp(0))
        .unwrap();
    s.decline(&agent("a"), &offer("c1", 1), "", Timestamp(1_000))
        .unwrap();
    s.request(handoff("c2", "en", &[], 0), Timestamp(2_000))
        .unwrap();
    assert_eq!(offered_to(&s, "c2"), Some(agent("a")));
}

#[test]
fn availability_with_a_plan_counts_agents_meeting_its_first_requirements() {
    let mut s = planned_pool();
    online(&mut s, "inside", &[], &["de"], 1, 0);
    online(&mut s, "outside", &[], &["de"], 1, 0);
    for a in ["inside", "outside"] {
        s.roster.get_mut(&agent(a)).unwrap().allowed_regions = vec!["berlin".into()];
    }
    s.set_agent_regions(
        &agent("inside"),
        Some(BTreeSet::from(["berlin".to_owned()])),
        Timestamp(0),
    )
    .unwrap();
    let mut r = requirements("de", &[]);
    r.regions = Some(BTreeSet::from(["berlin".to_owned()]));
    let h = handoff("probe", "de", &[], 0);
    assert_eq!(s.availability(&h, 10, Timestamp(1)).0, 2);
    assert_eq!(
        s.availability_with_plan(&h, &plan(vec![(0, r)]), 10, Timestamp(1))
            .0,
        1
    );
    let mut widened = requirements("de", &[]);
    widened.language_widened = true;
    let h = handoff("probe", "de-at", &[], 0);
    assert_eq!(
        s.availability_with_plan(&h, &plan(vec![(0, widened)]), 10, Timestamp(1))
            .0,
        2
    );
}

#[test]
fn transfer_to_a_queue_installs_the_target_plan_and_keeps_the_wait() {
    let mut s = planned_pool();
    online(&mut s, "first", &[("billing", 3)], &["en"], 1, 0);
    online(&mut s, "junior", &[("fraud", 2)], &["en"], 1, 1);
    s.request(handoff("c1", "en", &[("billing", 2)], 0), Timestamp(10))
        .unwrap();
    s.accept(&agent("first"), &offer("c1", 1), Timestamp(11))
        .unwrap();
    // The fraud queue's plan: level 4 first, any fraud level 2 after 30 s.
    let fraud = plan(vec![
        (0, requirements("en", &[("fraud", 4)])),
        (30_000, requirements("en", &[("fraud", 2)])),
    ]);
    let target = TransferTarget::Queue {
        category: "fraud".into(),
        required_skills: vec![Skill::new("fraud", 2)],
        language: None,
    };
    let c = s
        .transfer(
            &agent("first"),
            &cid("c1"),
            target,
            "",
            Some(fraud),
            Timestamp(1_000),
        )
        .unwrap();
    assert_eq!(c.state, ConversationState::Queued, "the plan's first step");
    assert_eq!(c.queued_since, Timestamp(10), "the original wait counts");
    s.sweep(Timestamp(30_999));
    assert_eq!(
        offered_to(&s, "c1"),
        None,
        "the plan's clock starts at the move"
    );
    s.sweep(Timestamp(31_000));
    assert_eq!(offered_to(&s, "c1"), Some(agent("junior")));
    s.check_invariants().unwrap();

    // A transfer to a named agent keeps the plan; a bad plan is refused.
    let bad = RoutingPlan {
        priority: 10,
        ..RoutingPlan::default()
    };
    s.accept(&agent("junior"), &offer("c1", 2), Timestamp(31_001))
        .unwrap();
    let err = s
        .transfer(
            &agent("junior"),
            &cid("c1"),
            TransferTarget::Queue {
                category: "fraud".into(),
                required_skills: vec![],
                language: None,
            },
            "",
            Some(bad),
            Timestamp(31_002),
        )
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::Invalid { field, .. } if field == "plan.priority"),
        "{err}"
    );
}
