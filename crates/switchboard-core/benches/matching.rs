//! Microbenchmarks of matching in the core, with per-operation latency
//! percentiles (HDR histogram), at 1k, 10k and 100k:
//!
//! - `request`: a new conversation is matched among N online agents (50
//!   skills, 10 languages) and offered; the cycle then cancels it, which
//!   puts the agent back (so the state stays the same size). Both the
//!   request and the cancel are timed separately.
//! - `agent_free`: an agent becomes available with N conversations waiting
//!   and is offered the best one it can serve; the cycle then sets it away,
//!   cancels that conversation and hands over a fresh one with the same
//!   requirements (untimed), so N and the share the agent can serve stay
//!   constant and every timed call makes an offer.
//!
//! Run: `cargo bench -p switchboard-core --bench matching`; `-- --size N`
//! runs one size.
//!
//! Each timed call goes through its own `#[inline(never)]` function
//! (`timed_request`, `timed_agent_free`), so callgrind can count exactly
//! the timed work: `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*timed_request*' <bench binary> --bench --size 10000`,
//! then the total divided by the 20,000 calls.

use hdrhistogram::Histogram;
use std::time::Instant;
use switchboard_core::engine::PoolState;
use switchboard_core::model::{Conversation, GoOnline, Handoff, RosterEntry, Skill, StatusChoice};
use switchboard_core::{AgentId, ConversationId, DispatchSettings, DomainError, PoolId, Timestamp};

const SKILLS: usize = 50;
const LANGUAGES: [&str; 10] = ["en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "ja"];

/// A small deterministic generator (no dependency needed for a benchmark).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound
    }
}

fn settings() -> DispatchSettings {
    DispatchSettings {
        max_wait_ms: i64::MAX / 4,
        lease_ms: i64::MAX / 4,
        offer_timeout_ms: i64::MAX / 4,
        ..DispatchSettings::default()
    }
}

fn agent_id(i: usize) -> AgentId {
    AgentId::parse("agent_id", &format!("agent-{i}")).unwrap_or_else(|e| panic!("{e}"))
}

fn handoff(id: &str, language: &str, skill: usize, level: u8) -> Handoff {
    Handoff {
        conversation_id: ConversationId::parse("conversation_id", id)
            .unwrap_or_else(|e| panic!("{e}")),
        customer_id: "c".into(),
        language: language.into(),
        category: "x".into(),
        required_skills: vec![Skill::new(format!("skill-{skill}"), level)],
        priority: 1,
        summary: String::new(),
        attributes: Default::default(),
        customer_asked_for_human: false,
        chat_reference: String::new(),
        preferred_agent: None,
        region: None,
        customer_location: None,
    }
}

fn pool_with_agents(n: usize, rng: &mut Lcg) -> PoolState {
    let mut state = PoolState::new(
        PoolId::parse("pool", "bench").unwrap_or_else(|e| panic!("{e}")),
        settings(),
    );
    for i in 0..n {
        let mut skills: Vec<Skill> = (0..3)
            .map(|_| Skill::new(format!("skill-{}", rng.next(SKILLS)), 1 + rng.next(5) as u8))
            .collect();
        skills.sort();
        skills.dedup_by(|a, b| a.name == b.name);
        let languages = vec![
            LANGUAGES[rng.next(10)].to_owned(),
            LANGUAGES[rng.next(10)].to_owned(),
        ];
        let mut languages = languages;
        languages.dedup();
        state.upsert_roster(RosterEntry {
            agent_id: agent_id(i),
            display_name: String::new(),
            skills,
            languages,
            max_capacity: 1,
            allowed_regions: vec![],
            attributes: vec![],
            token_epoch: 0,
        });
        let now = Timestamp(i as i64);
        let _ = state.go_online(&agent_id(i), GoOnline::default(), false, now);
        let _ = state.attach_stream(&agent_id(i), now);
        // As a store does after every command.
        state.take_events();
    }
    state
}

/// The timed call of the `request` benchmark (not inlined: see the module
/// docs).
#[inline(never)]
fn timed_request(
    state: &mut PoolState,
    handoff: Handoff,
    now: Timestamp,
) -> Result<(Conversation, bool), DomainError> {
    state.request(handoff, now)
}

/// The timed call of the `agent_free` benchmark (not inlined: see the
/// module docs).
#[inline(never)]
fn timed_agent_free(state: &mut PoolState, agent: &AgentId, now: Timestamp) {
    let _ = state.set_status(agent, StatusChoice::Available, now);
}

fn report(name: &str, n: usize, histogram: &Histogram<u64>) {
    println!(
        "{name:<22} n={n:<7} ops={:<6} p50={:>6.2}µs p99={:>6.2}µs max={:>7.2}µs",
        histogram.len(),
        histogram.value_at_quantile(0.50) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0
    );
}

fn bench_request(n: usize, ops: usize) {
    let mut rng = Lcg(42);
    let mut state = pool_with_agents(n, &mut rng);
    let mut request = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("{e}"));
    let mut cancel = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("{e}"));
    let mut matched = 0;
    let now = Timestamp(n as i64 + 1);
    for i in 0..ops {
        let id = format!("req-{i}");
        let h = handoff(
            &id,
            LANGUAGES[rng.next(10)],
            rng.next(SKILLS),
            1 + rng.next(3) as u8,
        );
        let started = Instant::now();
        let result = timed_request(&mut state, h, now);
        request
            .record(started.elapsed().as_nanos() as u64)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Ok((c, _)) = result {
            matched += usize::from(c.agent_id.is_some());
            let started = Instant::now();
            let _ = state.cancel(c.id(), "", now);
            cancel
                .record(started.elapsed().as_nanos() as u64)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        state.take_events();
    }
    report("request (match+offer)", n, &request);
    report("cancel (agent back)", n, &cancel);
    println!("{:<22} matched {matched} of {ops}", "");
}

fn bench_agent_free(n: usize, ops: usize) {
    let mut rng = Lcg(7);
    let mut state = PoolState::new(
        PoolId::parse("pool", "bench").unwrap_or_else(|e| panic!("{e}")),
        settings(),
    );
    // One agent, away while the queue fills.
    let agent = agent_id(0);
    let skills: Vec<Skill> = (0..10)
        .map(|s| Skill::new(format!("skill-{s}"), 5))
        .collect();
    state.upsert_roster(RosterEntry {
        agent_id: agent.clone(),
        display_name: String::new(),
        skills,
        languages: vec!["en".into(), "de".into()],
        max_capacity: 1,
        allowed_regions: vec![],
        attributes: vec![],
        token_epoch: 0,
    });
    let _ = state.go_online(&agent, GoOnline::default(), false, Timestamp(0));
    let _ = state.attach_stream(&agent, Timestamp(0));
    let _ = state.set_status(
        &agent,
        StatusChoice::Away {
            reason: "bench".into(),
        },
        Timestamp(0),
    );
    for i in 0..n {
        let h = handoff(
            &format!("q-{i}"),
            LANGUAGES[rng.next(10)],
            rng.next(SKILLS),
            1 + rng.next(5) as u8,
        );
        let _ = state.request(h, Timestamp(1 + i as i64));
        state.take_events();
    }
    let mut free = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("{e}"));
    let mut offered = 0;
    let now = Timestamp(n as i64 + 10);
    for i in 0..ops {
        let started = Instant::now();
        timed_agent_free(&mut state, &agent, now);
        free.record(started.elapsed().as_nanos() as u64)
            .unwrap_or_else(|e| panic!("{e}"));
        // Untimed: away first (so the cancel below does not free the agent
        // for the next conversation), cancel what it was offered and hand
        // over a fresh one with the same requirements: N and the share the
        // agent can serve stay constant.
        let _ = state.set_status(
            &agent,
            StatusChoice::Away {
                reason: "bench".into(),
            },
            now,
        );
        if let Some(offer) = state.presence(&agent).and_then(|p| p.pending_offer) {
            offered += 1;
            if let Ok(c) = state.cancel(&offer.conversation_id, "", now) {
                let mut h = std::sync::Arc::unwrap_or_clone(c.handoff);
                h.conversation_id =
                    ConversationId::parse("conversation_id", &format!("refill-{i}"))
                        .unwrap_or_else(|e| panic!("{e}"));
                let _ = state.request(h, now);
            }
        }
        state.take_events();
    }
    report("agent_free (best conv)", n, &free);
    println!("{:<22} offered {offered} of {ops}", "");
}

fn main() {
    // `cargo test --benches` passes --bench too; keep that run short.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || cfg!(debug_assertions);
    // `--size N` runs one size only (e.g. under callgrind).
    let one_size = args
        .iter()
        .position(|a| a == "--size")
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|e| panic!("--size {v}: {e}"))
        });
    let sizes: Vec<usize> = match (one_size, quick) {
        (Some(n), _) => vec![n],
        (None, true) => vec![1_000],
        (None, false) => vec![1_000, 10_000, 100_000],
    };
    let ops = if quick { 200 } else { 20_000 };
    for n in sizes {
        bench_request(n, ops);
        bench_agent_free(n, ops);
    }
}
