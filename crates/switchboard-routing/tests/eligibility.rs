//! Table-driven eligibility: one row per rule, each naming the reason.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Agent, config, handoff, id, loc};
use std::collections::BTreeSet;
use switchboard_core::model::{AgentStatus, Skill};
use switchboard_core::time::Timestamp;
use switchboard_routing::{
    Ineligible, OfferContext, RoutingError, base_requirements, eligible, requirements_at,
};

type Change = fn(&mut Agent);

#[test]
fn every_rule_with_its_reason() {
    let config = config();
    let queue = config.queue("billing").unwrap();
    // A Berlin customer speaking Austrian German, no wait yet.
    let requirements =
        base_requirements(&config, queue, &handoff("de-at", Some("berlin"), None)).unwrap();
    let excluded = BTreeSet::from([id("declined")]);
    let context = OfferContext {
        now: Timestamp::from_millis(10_000),
        excluded: &excluded,
    };

    let cases: Vec<(&str, Change, Result<(), Ineligible>)> = vec![
        ("the reference agent", |_| {}, Ok(())),
        (
            "away",
            |a| a.status = AgentStatus::Away,
            Err(Ineligible::NotAvailable(AgentStatus::Away)),
        ),
        (
            "in wrap-up",
            |a| a.status = AgentStatus::WrapUp,
            Err(Ineligible::NotAvailable(AgentStatus::WrapUp)),
        ),
        (
            "draining",
            |a| a.status = AgentStatus::Draining,
            Err(Ineligible::NotAvailable(AgentStatus::Draining)),
        ),
        (
            "at capacity",
            |a| a.active = 2,
            Err(Ineligible::AtCapacity {
                active: 2,
                capacity: 2,
            }),
        ),
        ("one slot left", |a| a.active = 1, Ok(())),
        (
            "zero capacity",
            |a| a.capacity = 0,
            Err(Ineligible::AtCapacity {
                active: 0,
                capacity: 0,
            }),
        ),
        (
            "declined this conversation",
            |a| a.id = id("declined"),
            Err(Ineligible::Excluded),
        ),
        (
            "in a reject delay",
            |a| a.reject_delay_until = Some(Timestamp::from_millis(10_001)),
            Err(Ineligible::RejectDelay {
                until: Timestamp::from_millis(10_001),
            }),
        ),
        (
            "reject delay just over",
            |a| a.reject_delay_until = Some(Timestamp::from_millis(10_000)),
            Ok(()),
        ),
        (
            "speaks the exact tag",
            |a| a.languages = vec!["de-at".into()],
            Ok(()),
        ),
        (
            "speaks a sibling only",
            |a| a.languages = vec!["de-de".into()],
            Err(Ineligible::Language {
                required: "de-at".into(),
            }),
        ),
        (
            "speaks another language",
            |a| a.languages = vec!["fr".into(), "en".into()],
            Err(Ineligible::Language {
                required: "de-at".into(),
            }),
        ),
        (
            "lacks a skill",
            |a| a.skills = vec![Skill::new("billing", 5)],
            Err(Ineligible::MissingSkill {
                skill: "refunds".into(),
                required: 2,
            }),
        ),
        (
            "skill too low",
            |a| a.skills = vec![Skill::new("billing", 3), Skill::new("refunds", 5)],
            Err(Ineligible::SkillTooLow {
                skill: "billing".into(),
                has: 3,
                required: 4,
            }),
        ),
        (
            "skills above the minimum",
            |a| a.skills = vec![Skill::new("billing", 5), Skill::new("refunds", 5)],
            Ok(()),
        ),
        (
            "lacks an attribute",
            |a| a.attributes.clear(),
            Err(Ineligible::MissingAttribute("kyc_cleared".into())),
        ),
        (
            "located outside the region",
            |a| a.location = Some(loc(2.35, 48.85)),
            Err(Ineligible::OutsideRegion),
        ),
        (
            "located on the region's border",
            |a| a.location = Some(loc(13.0, 52.5)),
            Ok(()),
        ),
        (
            "no location, region excludes",
            |a| a.location = None,
            Err(Ineligible::NoLocation),
        ),
        (
            "roster lists the region",
            |a| a.allowed_regions = vec!["berlin".into()],
            Ok(()),
        ),
        (
            "roster lists other regions only",
            |a| a.allowed_regions = vec!["eu".into()],
            Err(Ineligible::RegionNotInRoster),
        ),
    ];
    for (case, change, expected) in cases {
        let mut agent = Agent::new("alice");
        change(&mut agent);
        assert_eq!(
            eligible(&agent.profile(), &requirements, &context, &config.regions),
            expected,
            "{case}"
        );
    }
}

#[test]
fn region_rules_by_customer_region() {
    let config = config();
    let queue = config.queue("billing").unwrap();
    let excluded = BTreeSet::new();
    let context = OfferContext {
        now: Timestamp::from_millis(0),
        excluded: &excluded,
    };
    // (case, customer region, customer location, agent location, eligible?)
    let cases = [
        ("no region: anyone", None, None, None, true),
        (
            "eu customer, agent in eu",
            Some("eu"),
            None,
            Some(loc(2.0, 45.0)),
            true,
        ),
        (
            "eu customer, agent in the hole",
            Some("eu"),
            None,
            Some(loc(8.0, 47.0)),
            false,
        ),
        (
            "eu customer, agent on the hole's border",
            Some("eu"),
            None,
            Some(loc(6.0, 47.0)),
            true,
        ),
        (
            "open region admits no location",
            Some("open"),
            None,
            None,
            true,
        ),
        (
            "fiji customer, agent west of the seam",
            Some("fiji"),
            None,
            Some(loc(-179.5, -17.0)),
            true,
        ),
        (
            "fiji customer, agent east of the seam",
            Some("fiji"),
            None,
            Some(loc(178.0, -17.0)),
            true,
        ),
        (
            "fiji customer, agent in europe",
            Some("fiji"),
            None,
            Some(loc(2.0, 45.0)),
            false,
        ),
        (
            "located customer resolves to berlin",
            None,
            Some(loc(13.5, 52.5)),
            Some(loc(10.0, 50.0)),
            false,
        ),
        (
            "located customer, agent in berlin",
            None,
            Some(loc(13.5, 52.5)),
            Some(loc(13.2, 52.4)),
            true,
        ),
        (
            "customer located in no region",
            None,
            Some(loc(-70.0, -30.0)),
            None,
            true,
        ),
    ];
    for (case, region, customer_location, agent_location, expected) in cases {
        let requirements =
            base_requirements(&config, queue, &handoff("de", region, customer_location)).unwrap();
        let mut agent = Agent::new("alice");
        agent.location = agent_location;
        let result = eligible(&agent.profile(), &requirements, &context, &config.regions);
        assert_eq!(result.is_ok(), expected, "{case}: {result:?}");
    }
}

#[test]
fn a_handoff_naming_an_unknown_region_is_refused() {
    let config = config();
    let queue = config.queue("billing").unwrap();
    assert_eq!(
        base_requirements(&config, queue, &handoff("de", Some("atlantis"), None)),
        Err(RoutingError::UnknownRegion("atlantis".into()))
    );
}

#[test]
fn the_queue_raises_but_never_lowers_the_handoffs_own_skills() {
    let config = config();
    let queue = config.queue("billing").unwrap();
    let mut h = handoff("de", None, None);
    h.required_skills = vec![
        Skill::new("billing", 2),
        Skill::new("refunds", 5),
        Skill::new("tax", 1),
    ];
    let requirements = base_requirements(&config, queue, &h).unwrap();
    assert_eq!(
        requirements.skills,
        vec![
            Skill::new("billing", 4),
            Skill::new("refunds", 5),
            Skill::new("tax", 1)
        ]
    );
}

#[test]
fn relaxation_lets_more_agents_in_as_the_wait_grows() {
    let config = config();
    let queue = config.queue("billing").unwrap();
    let base = base_requirements(&config, queue, &handoff("de-at", Some("berlin"), None)).unwrap();
    let excluded = BTreeSet::new();
    let context = OfferContext {
        now: Timestamp::from_millis(0),
        excluded: &excluded,
    };
    // Level 3 billing, speaks de-DE, in Munich, no refunds skill.
    let mut agent = Agent::new("bob");
    agent.skills = vec![Skill::new("billing", 3)];
    agent.languages = vec!["de-de".into()];
    agent.location = Some(loc(11.6, 48.1));
    let at = |seconds: i64| {
        let requirements = requirements_at(queue, &base, seconds * 1000);
        eligible(&agent.profile(), &requirements, &context, &config.regions)
    };
    assert!(matches!(at(0), Err(Ineligible::Language { .. })));
    assert!(matches!(at(59), Err(Ineligible::Language { .. })));
    assert!(matches!(at(60), Err(Ineligible::MissingSkill { .. })));
    assert!(matches!(at(119), Err(Ineligible::MissingSkill { .. })));
    assert_eq!(at(120), Ok(()));
    // Munich is in germany, not berlin: the region step (90 s) was needed.
    let no_region_step = requirements_at(queue, &base, 120_000);
    assert!(no_region_step.regions.as_ref().unwrap().contains("germany"));
}

#[test]
fn by_default_the_roster_must_list_the_region() {
    let text = common::CONFIG.replace("roster_allowed_regions = \"if_listed\"\n", "");
    let config = switchboard_routing::RoutingConfig::from_toml("test.toml", &text).unwrap();
    assert_eq!(
        config.regions.roster_policy,
        switchboard_routing::RosterRegionPolicy::Required
    );
    let queue = config.queue("billing").unwrap();
    let excluded = BTreeSet::new();
    let context = OfferContext {
        now: Timestamp::from_millis(0),
        excluded: &excluded,
    };
    let berlin = base_requirements(&config, queue, &handoff("de", Some("berlin"), None)).unwrap();
    let anywhere = base_requirements(&config, queue, &handoff("de", None, None)).unwrap();
    // (case, roster regions, requirements, expected)
    let cases = [
        (
            "empty roster list, region-bound",
            vec![],
            &berlin,
            Err(Ineligible::RegionNotInRoster),
        ),
        ("empty roster list, no region", vec![], &anywhere, Ok(())),
        (
            "roster lists it",
            vec!["berlin".to_owned()],
            &berlin,
            Ok(()),
        ),
        (
            "roster lists another",
            vec!["eu".to_owned()],
            &berlin,
            Err(Ineligible::RegionNotInRoster),
        ),
    ];
    for (case, allowed, requirements, expected) in cases {
        let mut agent = Agent::new("alice");
        agent.allowed_regions = allowed;
        assert_eq!(
            eligible(&agent.profile(), requirements, &context, &config.regions),
            expected,
            "{case}"
        );
    }
}

/// The engine's view: a profile and a candidate built from the core's
/// roster entry and presence, the reject delay from the penalties.
#[test]
fn profiles_from_core_types() {
    use switchboard_core::model::{Presence, RosterEntry};
    use switchboard_routing::{AgentProfile, Candidate, Strategy, pick};
    let config = config();
    let roster = RosterEntry {
        agent_id: id("carol"),
        display_name: "Carol".into(),
        skills: vec![Skill::new("billing", 5), Skill::new("refunds", 3)],
        languages: vec!["de".into(), "en".into()],
        max_capacity: 3,
        allowed_regions: vec!["berlin".into()],
        attributes: vec!["kyc_cleared".into()],
        token_epoch: 0,
    };
    // Online with narrowed skills and capacity.
    let presence = Presence {
        agent_id: id("carol"),
        status: AgentStatus::Available,
        away_reason: String::new(),
        skills: vec![Skill::new("billing", 4), Skill::new("refunds", 2)],
        languages: vec!["de".into()],
        capacity: 2,
        active_conversations: 1,
        stream_attached: true,
        online_since: Timestamp::from_millis(0),
        last_heartbeat: Timestamp::from_millis(0),
        lease_expires: Timestamp::from_millis(30_000),
        idle_since: Timestamp::from_millis(500),
        pending_offer: None,
    };
    let queue = config.queue("billing").unwrap();
    let requirements =
        base_requirements(&config, queue, &handoff("de", Some("berlin"), None)).unwrap();
    let excluded = BTreeSet::new();
    let declined_at = Timestamp::from_millis(1_000);
    let penalties = switchboard_routing::Penalties {
        misses_before_away: 3,
        reject_delay_ms: 10_000,
    };
    let mut profile = AgentProfile::new(&roster, &presence);
    profile.location = Some(loc(13.4, 52.5));
    profile.reject_delay_until = penalties.reject_delay_until(declined_at);
    let at = |ms| OfferContext {
        now: Timestamp::from_millis(ms),
        excluded: &excluded,
    };
    assert_eq!(
        eligible(&profile, &requirements, &at(10_999), &config.regions),
        Err(Ineligible::RejectDelay {
            until: Timestamp::from_millis(11_000)
        })
    );
    assert_eq!(
        eligible(&profile, &requirements, &at(11_000), &config.regions),
        Ok(())
    );
    assert_eq!(
        switchboard_routing::Penalties::default().reject_delay_until(declined_at),
        None
    );

    let candidates = [Candidate::new(&presence, None, 0)];
    assert_eq!(
        pick(Strategy::BestSkillMatch, &requirements, &candidates),
        Some(0)
    );
    assert_eq!(candidates[0].capacity, 2);

    assert_eq!(queue.max_wait_due(599_999), None);
    assert!(queue.max_wait_due(600_000).is_some());
}
