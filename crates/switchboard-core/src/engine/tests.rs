//! Unit and property tests of the pool state machine. Time is a number we
//! pass in; nothing sleeps.

use super::*;
use crate::model::{GoOnline, Handoff};
use proptest::prelude::*;

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
                            let _ = s.transfer(&holder, &view.handoff.conversation_id, target, "note", t);
                        }
                }
                Op::Csat(c, score) => { let _ = s.report_csat(&cid(&format!("c{c}")), score, t); }
                Op::Advance(ms) => { now += ms; s.sweep(Timestamp(now)); }
            }
            s.take_events();
            prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
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
