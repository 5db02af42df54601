//! Property tests: relaxation is monotone, aging bounds starvation,
//! strategies pick only eligible agents, and nothing panics on any input.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Agent, loc, shared_config};
use proptest::prelude::*;
use std::collections::BTreeSet;
use switchboard_core::model::{Location, Skill};
use switchboard_core::time::Timestamp;
use switchboard_routing::aging::MICRO;
use switchboard_routing::{
    Aging, LanguageLookup, LanguageRequirement, LanguageWidening, OfferContext, QueuePolicy,
    RelaxStep, Relaxation, Requirements, RoutingConfig, Strategy as RoutingStrategy,
    check_requirements, eligible, pick, primary_subtag, requirements_at,
};

const SKILLS: [&str; 3] = ["billing", "refunds", "tax"];
const LANGUAGES: [&str; 7] = ["de", "de-at", "de-de", "fr", "zh", "zh-hant", "zh-hant-tw"];
const REGIONS: [&str; 5] = ["eu", "germany", "berlin", "open", "fiji"];
/// Agent locations worth testing: inside, outside, on borders, in a hole,
/// both sides of the antimeridian.
const PLACES: [(f64, f64); 9] = [
    (13.4, 52.5),
    (11.6, 48.1),
    (2.0, 45.0),
    (8.0, 47.0),
    (13.0, 52.5),
    (105.0, 5.0),
    (179.5, -17.0),
    (-179.5, -17.0),
    (-70.0, -30.0),
];

fn skill() -> impl Strategy<Value = String> {
    prop::sample::select(SKILLS.to_vec()).prop_map(str::to_owned)
}

fn relaxation() -> impl Strategy<Value = Relaxation> {
    prop_oneof![
        (skill(), 1u8..=5).prop_map(|(skill, to_level)| Relaxation::LowerSkill { skill, to_level }),
        skill().prop_map(|skill| Relaxation::DropSkill { skill }),
        prop_oneof![
            Just(LanguageWidening::Parent),
            Just(LanguageWidening::Primary)
        ]
        .prop_map(Relaxation::WidenLanguage),
        (
            prop::sample::select(REGIONS.to_vec()),
            prop::sample::select(REGIONS.to_vec())
        )
            .prop_map(|(from, to)| Relaxation::WidenRegion {
                from: from.into(),
                to: to.into()
            }),
    ]
}

/// Any steps in time order (not only ones the loader would accept: the
/// runtime must be monotone even for steps the loader calls tightening).
fn queue() -> impl Strategy<Value = QueuePolicy> {
    prop::collection::vec((0i64..300_000, relaxation()), 0..8).prop_map(|mut steps| {
        steps.sort_by_key(|(after, _)| *after);
        let mut q = QueuePolicy::builtin("q");
        q.relaxation = steps
            .into_iter()
            .map(|(after_ms, relaxation)| RelaxStep {
                after_ms,
                relaxation,
            })
            .collect();
        q
    })
}

fn requirements() -> impl Strategy<Value = Requirements> {
    (
        prop::sample::select(LANGUAGES.to_vec()),
        prop::collection::btree_map(skill(), 1u8..=5, 0..3),
        prop::option::of(prop::collection::btree_set(
            prop::sample::select(REGIONS.to_vec()),
            1..3,
        )),
    )
        .prop_map(|(language, skills, regions)| Requirements {
            language: LanguageRequirement::exact(language),
            skills: skills.into_iter().map(|(n, l)| Skill::new(n, l)).collect(),
            attributes: BTreeSet::new(),
            regions: regions.map(|r| r.into_iter().map(str::to_owned).collect()),
        })
}

fn agent() -> impl Strategy<Value = Agent> {
    (
        prop::collection::btree_map(skill(), 1u8..=5, 0..4),
        prop::collection::vec(prop::sample::select(LANGUAGES.to_vec()), 1..3),
        prop::option::of(prop::sample::select(PLACES.to_vec())),
        prop::collection::vec(prop::sample::select(REGIONS.to_vec()), 0..2),
        (0u32..4, 0u32..4, 0i64..100_000, 0u64..5),
        prop::option::of((1.0f64..=5.0, 0u32..300)),
        "[a-e]{1,3}",
    )
        .prop_map(
            |(skills, languages, place, allowed, (active, capacity, idle, seq), csat, name)| {
                let mut a = Agent::new(&name);
                a.skills = skills.into_iter().map(|(n, l)| Skill::new(n, l)).collect();
                a.languages = languages.into_iter().map(str::to_owned).collect();
                a.location = place.map(|(lon, lat)| loc(lon, lat));
                a.allowed_regions = allowed.into_iter().map(str::to_owned).collect();
                a.active = active;
                a.capacity = capacity;
                a.idle_since = Timestamp::from_millis(idle);
                a.last_offered_seq = seq;
                a.csat = csat.map(|(mean, count)| switchboard_routing::Csat { mean, count });
                a
            },
        )
}

proptest! {
    // About one case in eight starts eligible; many cases keep that useful.
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// An agent eligible at `t` stays eligible at every `t' > t`.
    #[test]
    fn relaxation_is_monotone(
        queue in queue(),
        base in requirements(),
        agent in agent(),
        t in 0i64..300_000,
        later in 0i64..300_000,
    ) {
        let regions = &shared_config().regions;
        let before = requirements_at(&queue, &base, t);
        let after = requirements_at(&queue, &base, t + later);
        if check_requirements(&agent.profile(), &before, regions).is_ok() {
            prop_assert!(
                check_requirements(&agent.profile(), &after, regions).is_ok(),
                "eligible at {t} ms, not at {} ms: {before:?} → {after:?}", t + later
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Effective priority never decreases with the wait.
    #[test]
    fn aging_is_monotone(
        rate in 0u64..10 * MICRO,
        ceiling in 0u8..=9,
        priority in 0u8..=9,
        w in 0i64..10_000_000,
        more in 0i64..10_000_000,
    ) {
        let aging = Aging { rate_micro_per_second: rate, ceiling };
        prop_assert!(aging.effective_priority(priority, w) <= aging.effective_priority(priority, w + more));
        prop_assert!(aging.effective_priority(priority, w).0 >= u64::from(priority) * MICRO);
    }

    /// After its bound, a conversation is ahead of every conversation of
    /// priority ≤ ceiling that arrived after it (queue order: effective
    /// priority, then longer wait).
    #[test]
    fn aging_bound_overtakes_every_later_arrival(
        rate in 1u64..10 * MICRO,
        ceiling in 0u8..=9,
        low in 0u8..=9,
        high in 0u8..=9,
        extra in 0i64..1_000_000,
        later_wait_fraction in 0.0f64..1.0,
    ) {
        let aging = Aging { rate_micro_per_second: rate, ceiling };
        let low = low.min(ceiling);
        let high = high.min(ceiling);
        let bound = aging.starvation_bound_ms(low).unwrap();
        let w = bound + extra;
        // A later arrival has waited strictly less.
        let x = ((w as f64) * later_wait_fraction) as i64;
        prop_assume!(x < w);
        let low_key = (aging.effective_priority(low, w), w);
        let high_key = (aging.effective_priority(high, x), x);
        prop_assert!(low_key > high_key, "{low_key:?} vs {high_key:?}");
    }

    /// Under continuous high-priority load (more arrivals than the server
    /// can take) a priority-0 conversation is still served within
    /// backlog + W(0) + 1 ticks of one second.
    #[test]
    fn aging_prevents_starvation_under_load(
        rate_milli in 10u64..2_000,
        backlog in 0usize..20,
        arrivals_per_tick in 1usize..4,
    ) {
        let aging = Aging { rate_micro_per_second: rate_milli * 1000, ceiling: 9 };
        let bound_ticks = (aging.starvation_bound_ms(0).unwrap() as u64).div_ceil(1000) as usize;
        // (priority, arrived at ms, is the low one)
        let mut queue: Vec<(u8, i64, bool)> = vec![(9, 0, false); backlog];
        queue.push((0, 0, true));
        let limit = backlog + bound_ticks + 1;
        let mut served_at = None;
        for tick in 1..=limit {
            let now = tick as i64 * 1000;
            queue.extend(std::iter::repeat_n((9, now - 500, false), arrivals_per_tick));
            let best = queue
                .iter()
                .enumerate()
                .max_by_key(|(i, (p, at, _))| (aging.effective_priority(*p, now - at), now - at, std::cmp::Reverse(*i)))
                .map(|(i, _)| i)
                .unwrap();
            if queue.remove(best).2 {
                served_at = Some(tick);
                break;
            }
        }
        prop_assert!(served_at.is_some(), "not served within {limit} ticks (backlog {backlog}, W {bound_ticks} s)");
    }

    /// Whatever the candidates, the pick is one of them, and it does not
    /// depend on their order.
    #[test]
    fn strategies_pick_only_from_the_given_set(
        agents in prop::collection::vec(agent(), 0..12),
        strategy in prop::sample::select(RoutingStrategy::ALL.iter().map(|(s, _)| *s).collect::<Vec<_>>()),
        rotate in 0usize..12,
    ) {
        let requirements = Requirements::language_only("de");
        let candidates: Vec<_> = agents.iter().map(Agent::candidate).collect();
        let picked = pick(strategy, &requirements, &candidates);
        prop_assert_eq!(picked.is_some(), !candidates.is_empty());
        if let Some(i) = picked {
            prop_assert!(i < candidates.len());
            let mut rotated = candidates.clone();
            rotated.rotate_left(rotate % candidates.len());
            let j = pick(strategy, &requirements, &rotated).unwrap();
            prop_assert_eq!(
                (rotated[j].agent_id, rotated[j].idle_since),
                (candidates[i].agent_id, candidates[i].idle_since)
            );
        }
    }

    /// The engine's flow: filter by eligibility, then pick. The chosen
    /// agent is always eligible.
    #[test]
    fn strategies_pick_only_eligible_agents(
        agents in prop::collection::vec(agent(), 0..12),
        requirements in requirements(),
        queue in queue(),
        waited in 0i64..300_000,
        strategy in prop::sample::select(RoutingStrategy::ALL.iter().map(|(s, _)| *s).collect::<Vec<_>>()),
    ) {
        let config = shared_config();
        let now_requirements = requirements_at(&queue, &requirements, waited);
        let excluded = BTreeSet::new();
        let context = OfferContext { now: Timestamp::from_millis(0), excluded: &excluded };
        let eligible_agents: Vec<&Agent> = agents
            .iter()
            .filter(|a| eligible(&a.profile(), &now_requirements, &context, &config.regions).is_ok())
            .collect();
        let candidates: Vec<_> = eligible_agents.iter().map(|a| a.candidate()).collect();
        if let Some(i) = pick(strategy, &now_requirements, &candidates) {
            let chosen = eligible_agents[i];
            prop_assert!(eligible(&chosen.profile(), &now_requirements, &context, &config.regions).is_ok());
        } else {
            prop_assert!(eligible_agents.is_empty());
        }
    }

    /// An engine that looks agents up by `LanguageRequirement::lookup`
    /// finds every agent the requirement accepts, widened or not.
    #[test]
    fn language_lookup_never_misses_an_accepted_agent(
        customer in prop::sample::select(LANGUAGES.to_vec()),
        agent in prop::sample::select(LANGUAGES.to_vec()),
        widenings in prop::collection::vec(prop_oneof![Just(LanguageWidening::Parent), Just(LanguageWidening::Primary)], 0..3),
    ) {
        let mut queue = QueuePolicy::builtin("q");
        queue.relaxation = widenings
            .into_iter()
            .map(|how| RelaxStep { after_ms: 0, relaxation: Relaxation::WidenLanguage(how) })
            .collect();
        let requirement = requirements_at(&queue, &Requirements::language_only(customer), 0).language;
        if requirement.accepts(agent) {
            match requirement.lookup() {
                LanguageLookup::Tags(tags) => prop_assert!(tags.iter().any(|t| t == agent)),
                LanguageLookup::Family(family) => prop_assert_eq!(primary_subtag(agent), family.as_str()),
            }
        }
    }

    /// The loader never panics, whatever the text.
    #[test]
    fn loader_survives_any_text(text in ".{0,400}") {
        let _ = RoutingConfig::from_toml("fuzz.toml", &text);
    }

    /// ...including text that is mostly valid routing TOML with random
    /// values, which reaches the deeper checks.
    #[test]
    fn loader_survives_routing_shaped_text(
        lines in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "[routing]", "[penalties]", "[aging]", "[defaults]", "[regions.r]",
                    "[regions.s]", "[queues.a]", "[queues.b]", "[[queues.a.relax]]",
                    "[[queues.b.relax]]",
                ]).prop_map(str::to_owned),
                (
                    prop::sample::select(vec![
                        "default_queue", "preferred_agent_window_seconds", "agents_without_location",
                        "misses_before_away", "reject_delay_seconds", "rate_per_second", "ceiling",
                        "strategy", "priority", "offer_timeout_seconds", "wrap_up_seconds", "max_wait",
                        "wkt", "geojson", "categories", "skills", "attributes", "relax", "after_seconds",
                        "lower_skill", "to_level", "drop_skill", "widen_language", "widen_region",
                        "from_region", "action", "queue", "reason",
                    ]),
                    prop::sample::select(vec![
                        "\"a\"", "\"b\"", "\"r\"", "\"s\"", "\"parent\"", "\"include\"", "0", "-1", "3",
                        "9999999999999999999", "1.5", "nan", "inf", "true", "[]", "[\"a\", 1]",
                        "{ billing = 3 }", "{ x = 9 }",
                        "{ after_seconds = 5, action = \"overflow\", queue = \"a\" }",
                        "{ after_seconds = 5, action = \"callback\" }",
                        "\"POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))\"",
                        "\"POLYGON((170 0, -170 0, -170 5, 170 5, 170 0))\"",
                        "\"MULTIPOLYGON(((0 0, 1 0, 0 0)))\"", "\"POLYGON EMPTY\"",
                        "'{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0],[1,1],[0,0]]]}'",
                        "'{\"type\":\"Polygon\",\"coordinates\":[[[0]]]}'",
                        "[{ after_seconds = 1, drop_skill = \"x\" }, { after_seconds = 0, widen_region = \"s\", from_region = \"r\" }]",
                    ]),
                ).prop_map(|(k, v)| format!("{k} = {v}")),
            ],
            0..30,
        )
    ) {
        let _ = RoutingConfig::from_toml("fuzz.toml", &lines.join("\n"));
    }

    /// Region tests never panic, whatever the coordinates.
    #[test]
    fn regions_survive_any_coordinates(lon in any::<f64>(), lat in any::<f64>()) {
        let config = shared_config();
        let location = Location { latitude: lat, longitude: lon };
        let _ = config.regions.resolve_region(location);
        for name in REGIONS {
            let _ = config.regions.get(name).unwrap().contains(location);
        }
    }
}
