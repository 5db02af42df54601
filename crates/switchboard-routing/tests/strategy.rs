//! Table-driven strategy choice: who each strategy picks, and its ties.

#![allow(clippy::unwrap_used)]

mod common;

use common::Agent;
use switchboard_core::model::Skill;
use switchboard_core::time::Timestamp;
use switchboard_routing::{Csat, Requirements, Strategy, pick};

fn requirements() -> Requirements {
    let mut r = Requirements::language_only("de");
    r.require_skill("billing", 2);
    r.require_skill("refunds", 1);
    r
}

/// The picked agent's name under `strategy`.
fn picked(strategy: Strategy, agents: &[Agent]) -> Option<String> {
    let candidates: Vec<_> = agents.iter().map(Agent::candidate).collect();
    pick(strategy, &requirements(), &candidates).map(|i| agents[i].id.to_string())
}

fn agent(name: &str, change: impl FnOnce(&mut Agent)) -> Agent {
    let mut a = Agent::new(name);
    change(&mut a);
    a
}

#[test]
fn nobody_to_pick() {
    for (strategy, _) in Strategy::ALL {
        assert_eq!(picked(strategy, &[]), None);
    }
}

#[test]
fn each_strategy_picks_by_its_own_score() {
    let idle_long = agent("idle-long", |a| {
        a.idle_since = Timestamp::from_millis(1_000)
    });
    let idle_short = agent("idle-short", |a| {
        a.idle_since = Timestamp::from_millis(9_000)
    });
    let half_busy = agent("half-busy", |a| {
        a.active = 1;
        a.capacity = 2;
        a.idle_since = Timestamp::from_millis(2_000);
    });
    let quarter_busy = agent("quarter-busy", |a| {
        a.active = 1;
        a.capacity = 4;
        a.idle_since = Timestamp::from_millis(5_000);
    });
    let expert = agent("expert", |a| {
        a.skills = vec![Skill::new("billing", 5), Skill::new("refunds", 5)];
        a.idle_since = Timestamp::from_millis(8_000);
    });
    let rr_next = agent("rr-next", |a| {
        a.last_offered_seq = 3;
        a.idle_since = Timestamp::from_millis(7_000);
    });
    let veteran = agent("veteran", |a| {
        a.csat = Some(Csat {
            mean: 4.9,
            count: 200,
        });
        a.idle_since = Timestamp::from_millis(6_000);
        a.last_offered_seq = 10;
    });
    let lucky = agent("lucky-once", |a| {
        a.csat = Some(Csat {
            mean: 5.0,
            count: 1,
        });
        a.idle_since = Timestamp::from_millis(6_500);
        a.last_offered_seq = 11;
    });
    let everyone = [
        idle_long.clone(),
        idle_short.clone(),
        half_busy.clone(),
        quarter_busy.clone(),
        expert.clone(),
        rr_next.clone(),
        veteran.clone(),
        lucky.clone(),
    ];
    // (strategy, agents, expected)
    let cases: Vec<(Strategy, Vec<Agent>, &str)> = vec![
        (
            Strategy::LongestIdle,
            vec![idle_short.clone(), idle_long.clone()],
            "idle-long",
        ),
        // Ties on idle time fall to the agent id.
        (
            Strategy::LongestIdle,
            vec![agent("b", |_| {}), agent("a", |_| {})],
            "a",
        ),
        (
            Strategy::LeastOccupied,
            vec![half_busy.clone(), quarter_busy.clone()],
            "quarter-busy",
        ),
        (
            Strategy::LeastOccupied,
            vec![quarter_busy.clone(), idle_short.clone()],
            "idle-short",
        ),
        // Equal occupancy (0): longest idle decides.
        (
            Strategy::LeastOccupied,
            vec![idle_short.clone(), idle_long.clone()],
            "idle-long",
        ),
        (Strategy::BestSkillMatch, everyone.to_vec(), "expert"),
        // Equal skill: longest idle decides.
        (
            Strategy::BestSkillMatch,
            vec![idle_short.clone(), idle_long.clone()],
            "idle-long",
        ),
        (
            Strategy::RoundRobin,
            vec![veteran.clone(), rr_next.clone(), lucky.clone()],
            "rr-next",
        ),
        // Never offered (0) goes first, oldest idle among them.
        (Strategy::RoundRobin, everyone.to_vec(), "idle-long"),
        (
            Strategy::QualityWeighted,
            vec![lucky.clone(), veteran.clone()],
            "veteran",
        ),
        // One 5 beats no ratings (the prior is 4.0).
        (
            Strategy::QualityWeighted,
            vec![idle_long.clone(), lucky.clone()],
            "lucky-once",
        ),
        (Strategy::QualityWeighted, everyone.to_vec(), "veteran"),
    ];
    for (strategy, agents, expected) in cases {
        assert_eq!(
            picked(strategy, &agents).as_deref(),
            Some(expected),
            "{strategy} among {:?}",
            agents.iter().map(|a| a.id.to_string()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn bad_csat_values_do_not_win() {
    let nan = agent("nan", |a| {
        a.csat = Some(Csat {
            mean: f64::NAN,
            count: 9,
        })
    });
    let huge = agent("huge", |a| {
        a.csat = Some(Csat {
            mean: 1e9,
            count: 1,
        })
    });
    let good = agent("good", |a| {
        a.csat = Some(Csat {
            mean: 4.8,
            count: 50,
        })
    });
    assert_eq!(
        picked(Strategy::QualityWeighted, &[nan, huge, good]).as_deref(),
        Some("good")
    );
}
