//! Loading routing files: the shipped example, and one test per class of
//! error, each checking the message, the key and the line.

#![allow(clippy::unwrap_used)]

use switchboard_routing::{
    ConfigError, ConfigErrorKind as Kind, ConfigErrors, LanguageWidening, MaxWaitAction,
    Relaxation, RoutingConfig, Strategy,
};

const FILE: &str = "routing.toml";

/// The one way these tests load text: every error, or a config.
fn load(text: &str) -> Result<RoutingConfig, ConfigErrors> {
    RoutingConfig::from_toml(FILE, text)
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.errors,
    }
}

/// Asserts the file gives exactly one error, of `kind`, at `key` on
/// `line`, whose message contains `needle`; returns it for more checks.
fn only_error(text: &str, kind: Kind, key: &str, line: usize, needle: &str) -> ConfigError {
    let found = errors(text);
    assert_eq!(found.len(), 1, "expected one error, got {found:#?}");
    let error = found.into_iter().next().unwrap();
    assert_eq!(error.kind, kind, "{error}");
    assert_eq!(error.key, key, "{error}");
    assert_eq!(error.line, line, "{error}");
    assert_eq!(error.file, FILE);
    assert!(error.message.contains(needle), "`{needle}` not in: {error}");
    error
}

#[test]
fn the_example_file_loads_and_means_what_it_says() {
    let text = include_str!("../../../deploy/routing.example.toml");
    let config = match RoutingConfig::from_toml("deploy/routing.example.toml", text) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(config.default_queue.as_deref(), Some("general"));
    assert_eq!(config.preferred_agent_window_ms, 30_000);
    assert_eq!(config.penalties.misses_before_away, 3);
    assert_eq!(config.penalties.reject_delay_ms, 10_000);
    assert_eq!(config.aging.rate_micro_per_second, 50_000);
    assert_eq!(config.aging.ceiling, 9);
    assert_eq!(
        config.regions.names().collect::<Vec<_>>(),
        ["berlin", "eu", "fiji", "germany"]
    );

    let billing = config.queue("billing").unwrap();
    assert_eq!(billing.strategy, Strategy::BestSkillMatch);
    assert_eq!(billing.offer_timeout_ms, 25_000);
    assert_eq!(billing.wrap_up_ms, 60_000);
    assert_eq!(
        billing.max_wait.action,
        MaxWaitAction::Overflow {
            queue: "general".into()
        }
    );
    assert_eq!(billing.relaxation.len(), 4);
    assert_eq!(
        billing.relaxation[1].relaxation,
        Relaxation::WidenLanguage(LanguageWidening::Parent)
    );
    // Categories and the default queue.
    assert_eq!(config.queue_for("refund").unwrap().name, "billing");
    assert_eq!(config.queue_for("billing").unwrap().name, "billing");
    assert_eq!(
        config.queue_for("no-such-category").unwrap().name,
        "general"
    );

    // Defaults are inherited, own keys override.
    let vip = config.queue("vip").unwrap();
    assert_eq!(vip.strategy, Strategy::LeastOccupied);
    assert_eq!(vip.priority, 8);
    assert_eq!(vip.offer_timeout_ms, 20_000);
    assert_eq!(vip.wrap_up_ms, 30_000);
    assert_eq!(vip.max_wait.after_ms, 600_000);
    let dispute = config.queue("payment_dispute").unwrap();
    assert!(dispute.attributes.contains("kyc_cleared"));
    assert_eq!(dispute.base_priority(2), 6);
    assert_eq!(dispute.base_priority(9), 9);
    assert!(matches!(
        config.queue("general").unwrap().max_wait.action,
        MaxWaitAction::Callback { priority: 0, .. }
    ));
    assert!(config.preferred_agent_exclusive(29_999));
    assert!(!config.preferred_agent_exclusive(30_000));
}

#[test]
fn the_version_follows_the_text() {
    let a = load("[queues.a]\n").unwrap();
    let again = load("[queues.a]\n").unwrap();
    let b = load("[queues.b]\n").unwrap();
    assert_eq!(a.version(), again.version());
    assert_ne!(a.version(), b.version());
    assert_eq!(a.version().len(), 16);
    // FNV-1a 64 of the empty string.
    assert_eq!(load("").unwrap().version(), "cbf29ce484222325");
}

#[test]
fn an_empty_file_is_the_builtin_policy() {
    let config = load("").unwrap();
    assert!(config.queues.is_empty());
    assert!(config.queue_for("anything").is_none());
    assert!(config.regions.is_empty());
}

#[test]
fn syntax_error() {
    let e = only_error("[routing]\ndefault_queue = \n", Kind::Syntax, "", 2, "");
    assert!(e.to_string().starts_with("routing.toml:2:"), "{e}");
}

#[test]
fn unknown_keys_everywhere() {
    let text = "\
[routing]
default_queu = \"general\"
[queues.billing]
skills = { billing = 3 }
stratgy = \"round_robin\"
[[queues.billing.relax]]
after_seconds = 30
lower_skil = \"billing\"
";
    let found = errors(text);
    let keys: Vec<(&str, usize, Kind)> = found
        .iter()
        .map(|e| (e.key.as_str(), e.line, e.kind))
        .collect();
    assert_eq!(
        keys,
        [
            ("routing.default_queu", 2, Kind::UnknownKey),
            ("queues.billing.stratgy", 5, Kind::UnknownKey),
            // The misspelt action leaves the step without one.
            ("queues.billing.relax[0]", 6, Kind::MissingKey),
            ("queues.billing.relax[0].lower_skil", 8, Kind::UnknownKey),
        ]
    );
    let unknown = found
        .iter()
        .find(|e| e.key == "routing.default_queu")
        .unwrap();
    assert_eq!(unknown.kind, Kind::UnknownKey);
    assert!(
        unknown
            .message
            .contains("unknown key `default_queu`; expected one of: default_queue"),
        "{unknown}"
    );
}

#[test]
fn missing_key() {
    only_error(
        "[queues.general]\nmax_wait = { after_seconds = 60 }\n",
        Kind::MissingKey,
        "queues.general.max_wait.action",
        2,
        "missing key `action`: one of expire, overflow, callback",
    );
}

#[test]
fn wrong_type() {
    only_error(
        "[queues.general]\noffer_timeout_seconds = \"20\"\n",
        Kind::WrongType,
        "queues.general.offer_timeout_seconds",
        2,
        "expected an integer, found string",
    );
}

#[test]
fn skill_level_out_of_range() {
    only_error(
        "[queues.billing]\nskills = { billing = 7 }\n",
        Kind::OutOfRange,
        "queues.billing.skills.billing",
        2,
        "skill level 7 is out of range; levels are 1 to 5",
    );
    only_error(
        "[queues.billing]\nskills = { billing = 0 }\n",
        Kind::OutOfRange,
        "queues.billing.skills.billing",
        2,
        "skill level 0 is out of range",
    );
}

#[test]
fn number_out_of_range() {
    only_error(
        "[queues.vip]\npriority = 12\n",
        Kind::OutOfRange,
        "queues.vip.priority",
        2,
        "is 12, must be 0 to 9",
    );
    only_error(
        "[aging]\nrate_per_second = -1.5\n",
        Kind::OutOfRange,
        "aging.rate_per_second",
        2,
        "is -1.5, must be 0 to 10",
    );
}

#[test]
fn invalid_value() {
    only_error(
        "[regions.x]\nwkt = \"POLYGON((0 0, 1 0, 1 1, 0 0))\"\ngeojson = \"{}\"\n",
        Kind::InvalidValue,
        "regions.x.geojson",
        3,
        "not both",
    );
    only_error(
        "[queues.q]\nmax_wait = { after_seconds = 5, action = \"expire\", queue = \"q\" }\n",
        Kind::InvalidValue,
        "queues.q.max_wait.queue",
        2,
        "`queue` applies only to action = \"overflow\"",
    );
    only_error(
        "[routing]\nroster_allowed_regions = \"sometimes\"\n",
        Kind::InvalidValue,
        "routing.roster_allowed_regions",
        2,
        "unknown policy `sometimes`; expected `required` or `if_listed`",
    );
    only_error(
        "[queues.q]\nskills = { Billing = 3 }\n",
        Kind::InvalidValue,
        "queues.q.skills.Billing",
        2,
        "bad skill name",
    );
}

#[test]
fn unknown_queue_as_overflow_target_and_default() {
    only_error(
        "[queues.billing]\nmax_wait = { after_seconds = 60, action = \"overflow\", queue = \"genral\" }\n",
        Kind::UnknownQueue,
        "queues.billing.max_wait.queue",
        2,
        "unknown queue `genral`; queues are: billing",
    );
    only_error(
        "[routing]\ndefault_queue = \"general\"\n",
        Kind::UnknownQueue,
        "routing.default_queue",
        2,
        "unknown queue `general`; the file defines no queues",
    );
}

const REGIONS: &str = "\
[regions.berlin]
wkt = \"POLYGON((13 52, 14 52, 14 53, 13 53, 13 52))\"
[regions.germany]
wkt = \"POLYGON((5 47, 15 47, 15 55, 5 55, 5 47))\"
[regions.paris]
wkt = \"POLYGON((2 48, 3 48, 3 49, 2 49, 2 48))\"
";

#[test]
fn unknown_region() {
    let text = format!(
        "{REGIONS}[queues.q]\nrelax = [{{ after_seconds = 10, widen_region = \"deutschland\", from_region = \"berlin\" }}]\n"
    );
    only_error(
        &text,
        Kind::UnknownRegion,
        "queues.q.relax[0].widen_region",
        8,
        "unknown region `deutschland`; regions are: berlin, germany, paris",
    );
}

#[test]
fn unknown_strategy() {
    only_error(
        "[defaults]\nstrategy = \"fastest\"\n",
        Kind::UnknownStrategy,
        "defaults.strategy",
        2,
        "unknown strategy `fastest`; expected one of: longest_idle, least_occupied, best_skill_match, round_robin, quality_weighted",
    );
}

#[test]
fn bad_polygons() {
    let unclosed = only_error(
        "\n[regions.r]\ngeojson = '{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0],[1,1],[0,1]]]}'\n",
        Kind::BadPolygon,
        "regions.r.geojson",
        3,
        "bad polygon: exterior ring is not closed",
    );
    assert!(
        unclosed
            .to_string()
            .starts_with("routing.toml:3:11: `regions.r.geojson`: bad polygon"),
        "{unclosed}"
    );
    only_error(
        "[regions.r]\nwkt = \"POLYGON((0 0, 1 0, 0 0))\"\n",
        Kind::BadPolygon,
        "regions.r.wkt",
        2,
        "a ring needs at least 4",
    );
    only_error(
        "[regions.r]\nwkt = \"POLYGON((0 0, 10 10, 10 0, 0 10, 0 0))\"\n",
        Kind::BadPolygon,
        "regions.r.wkt",
        2,
        "self-intersection",
    );
    only_error(
        "[regions.r]\nwkt = \"POLYGON((0 0, 1 0, 1 100, 0 0))\"\n",
        Kind::BadPolygon,
        "regions.r.wkt",
        2,
        "latitude 100 is outside -90..90",
    );
    only_error(
        "[regions.r]\nagents_without_location = \"include\"\n",
        Kind::MissingKey,
        "regions.r.wkt",
        1,
        "a region needs a polygon",
    );
}

#[test]
fn antimeridian_crossed_twice_is_unsupported() {
    only_error(
        "[regions.r]\nwkt = \"POLYGON((170 0, -170 0, -10 5, 10 5, 170 0))\"\n",
        Kind::Unsupported,
        "regions.r.wkt",
        2,
        "unsupported",
    );
}

#[test]
fn relaxation_that_raises_a_level_tightens() {
    let text = "\
[queues.billing]
skills = { billing = 3 }
[[queues.billing.relax]]
after_seconds = 30
lower_skill = \"billing\"
to_level = 4
";
    only_error(
        text,
        Kind::RelaxationTightens,
        "queues.billing.relax[0].to_level",
        6,
        "tightens: raises `billing` from level 3 (set by the queue's `skills`) to 4",
    );
    let text = "\
[queues.billing]
relax = [
  { after_seconds = 30, lower_skill = \"billing\", to_level = 2 },
  { after_seconds = 60, lower_skill = \"billing\", to_level = 3 },
]
";
    only_error(
        text,
        Kind::RelaxationTightens,
        "queues.billing.relax[1].to_level",
        4,
        "raises `billing` from level 2 (set by step 0) to 3",
    );
}

#[test]
fn relaxation_that_requires_a_dropped_skill_again_tightens() {
    let text = "\
[queues.billing]
relax = [
  { after_seconds = 30, drop_skill = \"billing\" },
  { after_seconds = 60, lower_skill = \"billing\", to_level = 1 },
]
";
    only_error(
        text,
        Kind::RelaxationTightens,
        "queues.billing.relax[1].to_level",
        4,
        "`billing` was dropped by step 0",
    );
}

#[test]
fn widening_to_a_region_that_does_not_cover_tightens() {
    let text = format!(
        "{REGIONS}[queues.q]\nrelax = [{{ after_seconds = 10, widen_region = \"paris\", from_region = \"berlin\" }}]\n"
    );
    only_error(
        &text,
        Kind::RelaxationTightens,
        "queues.q.relax[0].widen_region",
        8,
        "region `paris` does not cover region `berlin`",
    );
    let good = format!(
        "{REGIONS}[queues.q]\nrelax = [{{ after_seconds = 10, widen_region = \"germany\", from_region = \"berlin\" }}]\n"
    );
    assert!(load(&good).is_ok());
}

#[test]
fn relaxation_out_of_time_order() {
    let text = "\
[queues.billing]
relax = [
  { after_seconds = 60, widen_language = \"parent\" },
  { after_seconds = 30, drop_skill = \"billing\" },
]
";
    only_error(
        text,
        Kind::RelaxationOutOfOrder,
        "queues.billing.relax[1].after_seconds",
        4,
        "step at 30 s comes after step 0 at 60 s; steps must be in time order",
    );
}

#[test]
fn relaxation_step_with_two_actions_or_an_unknown_widening() {
    only_error(
        "[queues.q]\nrelax = [{ after_seconds = 1, drop_skill = \"a\", widen_language = \"parent\" }]\n",
        Kind::InvalidValue,
        "queues.q.relax[0].widen_language",
        2,
        "has both `drop_skill` and `widen_language`; give one action per step",
    );
    only_error(
        "[queues.q]\nrelax = [{ after_seconds = 1, widen_language = \"any\" }]\n",
        Kind::InvalidValue,
        "queues.q.relax[0].widen_language",
        2,
        "unknown language widening `any`",
    );
}

#[test]
fn a_category_served_twice() {
    only_error(
        "[queues.billing]\n[queues.refunds]\ncategories = [\"billing\"]\n",
        Kind::Duplicate,
        "queues.refunds.categories",
        3,
        "category `billing` is already served by queue `billing`",
    );
}

#[test]
fn overflow_cycle() {
    let text = "\
[queues.a]
max_wait = { after_seconds = 60, action = \"overflow\", queue = \"b\" }
[queues.b]
max_wait = { after_seconds = 60, action = \"overflow\", queue = \"c\" }
[queues.c]
max_wait = { after_seconds = 60, action = \"overflow\", queue = \"a\" }
";
    only_error(
        text,
        Kind::OverflowCycle,
        "queues.a.max_wait.queue",
        2,
        "overflow cycle a → b → c → a",
    );
    // A default that overflows into a queue that inherits it loops too.
    only_error(
        "[defaults]\nmax_wait = { after_seconds = 60, action = \"overflow\", queue = \"general\" }\n[queues.general]\n",
        Kind::OverflowCycle,
        "defaults.max_wait.queue",
        2,
        "overflow cycle general → general",
    );
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let text = "\
[defaults]
strategy = \"fastest\"
[regions.r]
wkt = \"POLYGON((0 0, 1 0, 1 1, 0 1))\"
[queues.billing]
skills = { billing = 9 }
colour = \"blue\"
max_wait = { after_seconds = 60, action = \"overflow\", queue = \"nowhere\" }
relax = [
  { after_seconds = 60, widen_language = \"parent\" },
  { after_seconds = 30, widen_region = \"mars\", from_region = \"r\" },
]
";
    let all = match load(text) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    let kinds: Vec<(usize, Kind)> = all.errors.iter().map(|e| (e.line, e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (2, Kind::UnknownStrategy),
            (4, Kind::BadPolygon),
            (6, Kind::OutOfRange),
            (7, Kind::UnknownKey),
            (8, Kind::UnknownQueue),
            (11, Kind::RelaxationOutOfOrder),
            // `mars` only: `r` is defined, its polygon already reported.
            (11, Kind::UnknownRegion),
        ]
    );
    let shown = all.to_string();
    assert!(shown.starts_with("routing config has 7 errors\n  routing.toml:2:12: `defaults.strategy`: unknown strategy"), "{shown}");
}

/// The table "How requirements evolve while a conversation waits" in
/// docs/routing.md, checked against the example file.
#[test]
fn the_documented_evolution_of_the_example_billing_queue() {
    use switchboard_routing::{Requirements, requirements_at};
    let text = include_str!("../../../deploy/routing.example.toml");
    let config = RoutingConfig::from_toml("deploy/routing.example.toml", text).unwrap();
    let billing = config.queue("billing").unwrap();
    let mut base = Requirements::language_only("de-at");
    base.require_skill("billing", 4);
    base.regions = Some(["berlin".to_owned()].into());
    /// (seconds, language tag, widened, billing level, regions)
    type Row<'a> = (i64, &'a str, bool, Option<u8>, &'a [&'a str]);
    let rows: [Row; 6] = [
        (0, "de-at", false, Some(4), &["berlin"]),
        (30, "de-at", false, Some(3), &["berlin"]),
        (90, "de", true, Some(3), &["berlin"]),
        (120, "de", true, Some(3), &["berlin", "germany"]),
        (180, "de", true, None, &["berlin", "germany"]),
        (299, "de", true, None, &["berlin", "germany"]),
    ];
    for (seconds, tag, widened, level, regions) in rows {
        let r = requirements_at(billing, &base, seconds * 1000);
        assert_eq!(r.language.tag, tag, "{seconds} s");
        assert_eq!(r.language.widened, widened, "{seconds} s");
        assert_eq!(r.skill_level("billing"), level, "{seconds} s");
        let got: Vec<&str> = r.regions.iter().flatten().map(String::as_str).collect();
        assert_eq!(got, regions, "{seconds} s");
    }
    assert_eq!(billing.max_wait.after_ms, 300_000);
    let aging = config.aging;
    assert_eq!(aging.starvation_bound_ms(0), Some(180_000));
    assert_eq!(aging.starvation_bound_ms(5), Some(80_000));
}
