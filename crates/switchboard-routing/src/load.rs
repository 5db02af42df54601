//! Loading a routing file: TOML text → validated [`RoutingConfig`], with
//! every problem reported at once.
//!
//! # Design
//!
//! The file is parsed into toml's spanned document tree
//! (`toml::de::DeTable`) and walked by hand rather than deserialized with
//! serde: serde stops at the first error, and operators fixing a file want
//! all of them, each with its line and key. Unknown keys are errors
//! everywhere (a typo must not silently fall back to a default). Syntax
//! errors stop the walk: the recovered tree would only add noise.

use crate::aging::{Aging, MICRO};
use crate::config::{
    LanguageWidening, MaxWait, MaxWaitAction, Penalties, QueuePolicy, RelaxStep, Relaxation,
    RoutingConfig, Strategy,
};
use crate::error::{ConfigError, ConfigErrorKind as Kind, ConfigErrors};
use crate::region::{NoLocationPolicy, PolygonFormat, Regions, RosterRegionPolicy, parse_region};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use switchboard_core::model::Skill;
use switchboard_core::validate::{MAX_PRIORITY, MAX_TEXT_BYTES, skill_name};
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

type Span = Range<usize>;

const TOP_KEYS: &[&str] = &[
    "routing",
    "penalties",
    "aging",
    "defaults",
    "regions",
    "queues",
];
const ROUTING_KEYS: &[&str] = &[
    "default_queue",
    "preferred_agent_window_seconds",
    "agents_without_location",
    "roster_allowed_regions",
];
const PENALTY_KEYS: &[&str] = &["misses_before_away", "reject_delay_seconds"];
const AGING_KEYS: &[&str] = &["rate_per_second", "ceiling"];
const DEFAULT_KEYS: &[&str] = &[
    "priority",
    "strategy",
    "offer_timeout_seconds",
    "wrap_up_seconds",
    "max_wait",
];
const REGION_KEYS: &[&str] = &["wkt", "geojson", "agents_without_location"];
const QUEUE_KEYS: &[&str] = &[
    "categories",
    "skills",
    "attributes",
    "priority",
    "strategy",
    "offer_timeout_seconds",
    "wrap_up_seconds",
    "max_wait",
    "relax",
];
const MAX_WAIT_KEYS: &[&str] = &["after_seconds", "action", "reason", "queue", "priority"];
const RELAX_KEYS: &[&str] = &[
    "after_seconds",
    "lower_skill",
    "to_level",
    "drop_skill",
    "widen_language",
    "widen_region",
    "from_region",
];
const RELAX_ACTIONS: &[&str] = &[
    "lower_skill",
    "drop_skill",
    "widen_language",
    "widen_region",
];

/// Longest wait any timer may name: a day.
const MAX_SECONDS: i64 = 86_400;
const MAX_NAME_LEN: usize = 64;
const MAX_RATE_PER_SECOND: f64 = 10.0;

impl RoutingConfig {
    /// Parses and validates a routing file. `file` names it in messages.
    /// Every problem is reported, each with file, line, column and key.
    pub fn from_toml(file: &str, text: &str) -> Result<RoutingConfig, ConfigErrors> {
        let mut loader = Loader {
            file,
            source: text,
            errors: Vec::new(),
            broken_regions: BTreeSet::new(),
        };
        let (document, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            for error in syntax {
                let span = error.span().unwrap_or(0..0);
                loader.error(span, "", Kind::Syntax, error.message().trim().to_owned());
            }
            return Err(loader.finish());
        }
        let config = loader.document(document.get_ref());
        if loader.errors.is_empty() {
            Ok(config)
        } else {
            Err(loader.finish())
        }
    }
}

struct Loader<'s> {
    file: &'s str,
    source: &'s str,
    errors: Vec<ConfigError>,
    /// Regions defined with a bad polygon: already reported, so references
    /// to them are not reported again as unknown.
    broken_regions: BTreeSet<String>,
}

/// Defaults a queue inherits.
struct QueueDefaults {
    priority: u8,
    strategy: Strategy,
    offer_timeout_ms: i64,
    wrap_up_ms: i64,
    max_wait: MaxWait,
    /// Where an inherited overflow target was written.
    overflow_at: Option<(Span, String)>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn find<'t, 'i>(
    table: &'t DeTable<'i>,
    key: &str,
) -> Option<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == key)
}

fn parse_integer(value: &DeValue<'_>) -> Option<i64> {
    let DeValue::Integer(integer) = value else {
        return None;
    };
    let digits: String = integer.as_str().chars().filter(|c| *c != '_').collect();
    let digits = digits.strip_prefix('+').unwrap_or(&digits);
    i64::from_str_radix(digits, integer.radix()).ok()
}

impl<'s> Loader<'s> {
    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors {
            errors: self.errors,
        }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let bytes = self.source.as_bytes();
        let offset = offset.min(bytes.len());
        let before = &bytes[..offset];
        let line = 1 + before.iter().filter(|b| **b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let column = 1 + before[line_start..]
            .iter()
            .filter(|b| (**b & 0xC0) != 0x80)
            .count();
        (line, column)
    }

    fn error(&mut self, span: Span, key: &str, kind: Kind, message: impl Into<String>) {
        let (line, column) = self.line_column(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            kind,
            message: message.into(),
        });
    }

    /// Reports every key of `table` not in `allowed`.
    fn known_keys(&mut self, table: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for (key, _) in table.iter() {
            let name = key.get_ref().as_ref();
            if !allowed.contains(&name) {
                self.error(
                    key.span(),
                    &join(path, name),
                    Kind::UnknownKey,
                    format!(
                        "unknown key `{name}`; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn wrong_type(&mut self, value: &Spanned<DeValue<'_>>, key: &str, expected: &str) {
        self.error(
            value.span(),
            key,
            Kind::WrongType,
            format!("expected {expected}, found {}", value.get_ref().type_str()),
        );
    }

    fn missing(&mut self, span: Span, path: &str, key: &str, why: &str) {
        self.error(
            span,
            &join(path, key),
            Kind::MissingKey,
            format!("missing key `{key}`{why}"),
        );
    }

    fn string(&mut self, table: &DeTable<'_>, path: &str, key: &str) -> Option<(String, Span)> {
        let (_, value) = find(table, key)?;
        match value.get_ref() {
            DeValue::String(s) => Some((s.to_string(), value.span())),
            _ => {
                self.wrong_type(value, &join(path, key), "a string");
                None
            }
        }
    }

    fn integer(
        &mut self,
        table: &DeTable<'_>,
        path: &str,
        key: &str,
        range: (i64, i64),
    ) -> Option<(i64, Span)> {
        let (_, value) = find(table, key)?;
        let full = join(path, key);
        let Some(n) = parse_integer(value.get_ref()) else {
            if matches!(value.get_ref(), DeValue::Integer(_)) {
                self.error(
                    value.span(),
                    &full,
                    Kind::OutOfRange,
                    "integer does not fit in 64 bits",
                );
            } else {
                self.wrong_type(value, &full, "an integer");
            }
            return None;
        };
        if n < range.0 || n > range.1 {
            self.error(
                value.span(),
                &full,
                Kind::OutOfRange,
                format!("is {n}, must be {} to {}", range.0, range.1),
            );
            return None;
        }
        Some((n, value.span()))
    }

    fn seconds_as_ms(
        &mut self,
        table: &DeTable<'_>,
        path: &str,
        key: &str,
        min: i64,
    ) -> Option<(i64, Span)> {
        self.integer(table, path, key, (min, MAX_SECONDS))
            .map(|(s, span)| (s * 1000, span))
    }

    fn number(
        &mut self,
        table: &DeTable<'_>,
        path: &str,
        key: &str,
        range: (f64, f64),
    ) -> Option<f64> {
        let (_, value) = find(table, key)?;
        let full = join(path, key);
        let n = match value.get_ref() {
            DeValue::Integer(_) => parse_integer(value.get_ref()).map(|n| n as f64),
            DeValue::Float(f) => {
                let digits: String = f.as_str().chars().filter(|c| *c != '_').collect();
                digits.parse::<f64>().ok()
            }
            _ => {
                self.wrong_type(value, &full, "a number");
                return None;
            }
        };
        match n {
            Some(n) if n.is_finite() && n >= range.0 && n <= range.1 => Some(n),
            Some(n) => {
                self.error(
                    value.span(),
                    &full,
                    Kind::OutOfRange,
                    format!("is {n}, must be {} to {}", range.0, range.1),
                );
                None
            }
            None => {
                self.error(
                    value.span(),
                    &full,
                    Kind::OutOfRange,
                    "is not a usable number",
                );
                None
            }
        }
    }

    fn table<'t, 'i>(
        &mut self,
        parent: &'t DeTable<'i>,
        path: &str,
        key: &str,
    ) -> Option<(&'t DeTable<'i>, Span)> {
        let (_, value) = find(parent, key)?;
        match value.get_ref() {
            DeValue::Table(t) => Some((t, value.span())),
            _ => {
                self.wrong_type(value, &join(path, key), "a table");
                None
            }
        }
    }

    fn array<'t, 'i>(
        &mut self,
        parent: &'t DeTable<'i>,
        path: &str,
        key: &str,
    ) -> Option<&'t DeArray<'i>> {
        let (_, value) = find(parent, key)?;
        match value.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.wrong_type(value, &join(path, key), "an array");
                None
            }
        }
    }

    fn string_list(&mut self, parent: &DeTable<'_>, path: &str, key: &str) -> Vec<(String, Span)> {
        let Some(array) = self.array(parent, path, key) else {
            return Vec::new();
        };
        let full = join(path, key);
        let mut out = Vec::new();
        for (i, item) in array.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span())),
                _ => self.wrong_type(item, &format!("{full}[{i}]"), "a string"),
            }
        }
        out
    }

    fn name(&mut self, name: &str, span: Span, key: &str, what: &str) -> bool {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            self.error(
                span,
                key,
                Kind::InvalidValue,
                format!(
                    "{what} name `{name}` must be 1 to {MAX_NAME_LEN} ASCII letters, digits, _ - or ."
                ),
            );
        }
        ok
    }

    fn strategy(&mut self, table: &DeTable<'_>, path: &str) -> Option<Strategy> {
        let (name, span) = self.string(table, path, "strategy")?;
        let strategy = Strategy::from_name(&name);
        if strategy.is_none() {
            let names: Vec<&str> = Strategy::ALL.iter().map(|(_, n)| *n).collect();
            self.error(
                span,
                &join(path, "strategy"),
                Kind::UnknownStrategy,
                format!(
                    "unknown strategy `{name}`; expected one of: {}",
                    names.join(", ")
                ),
            );
        }
        strategy
    }

    fn no_location_policy(&mut self, table: &DeTable<'_>, path: &str) -> Option<NoLocationPolicy> {
        let (name, span) = self.string(table, path, "agents_without_location")?;
        let policy = NoLocationPolicy::from_name(&name);
        if policy.is_none() {
            self.error(
                span,
                &join(path, "agents_without_location"),
                Kind::InvalidValue,
                format!("unknown policy `{name}`; expected `exclude` or `include`"),
            );
        }
        policy
    }

    fn reason(&mut self, table: &DeTable<'_>, path: &str, default: &str) -> String {
        let Some((reason, span)) = self.string(table, path, "reason") else {
            return default.to_owned();
        };
        if reason.trim().is_empty() || reason.len() > MAX_TEXT_BYTES {
            self.error(
                span,
                &join(path, "reason"),
                Kind::InvalidValue,
                format!("must be 1 to {MAX_TEXT_BYTES} bytes of text"),
            );
        }
        reason
    }

    fn document(&mut self, root: &DeTable<'_>) -> RoutingConfig {
        self.known_keys(root, "", TOP_KEYS);

        let mut default_queue = None;
        let mut preferred_agent_window_ms = 0;
        let mut pool_no_location = NoLocationPolicy::Exclude;
        let mut roster_policy = RosterRegionPolicy::Required;
        if let Some((routing, _)) = self.table(root, "", "routing") {
            self.known_keys(routing, "routing", ROUTING_KEYS);
            default_queue = self.string(routing, "routing", "default_queue");
            if let Some((ms, _)) = self.integer(
                routing,
                "routing",
                "preferred_agent_window_seconds",
                (0, 600),
            ) {
                preferred_agent_window_ms = ms * 1000;
            }
            if let Some(policy) = self.no_location_policy(routing, "routing") {
                pool_no_location = policy;
            }
            if let Some((name, span)) = self.string(routing, "routing", "roster_allowed_regions") {
                match RosterRegionPolicy::from_name(&name) {
                    Some(policy) => roster_policy = policy,
                    None => self.error(
                        span,
                        "routing.roster_allowed_regions",
                        Kind::InvalidValue,
                        format!("unknown policy `{name}`; expected `required` or `if_listed`"),
                    ),
                }
            }
        }

        let mut penalties = Penalties::default();
        if let Some((table, _)) = self.table(root, "", "penalties") {
            self.known_keys(table, "penalties", PENALTY_KEYS);
            if let Some((n, _)) = self.integer(table, "penalties", "misses_before_away", (1, 100)) {
                penalties.misses_before_away = u32::try_from(n).unwrap_or(u32::MAX);
            }
            if let Some((ms, _)) = self.seconds_as_ms(table, "penalties", "reject_delay_seconds", 0)
            {
                penalties.reject_delay_ms = ms;
            }
        }

        let mut aging = Aging::default();
        if let Some((table, _)) = self.table(root, "", "aging") {
            self.known_keys(table, "aging", AGING_KEYS);
            if let Some(rate) = self.number(
                table,
                "aging",
                "rate_per_second",
                (0.0, MAX_RATE_PER_SECOND),
            ) {
                // Bounded above by MAX_RATE_PER_SECOND, so the cast is exact enough.
                aging.rate_micro_per_second = (rate * MICRO as f64).round() as u64;
            }
            if let Some((n, _)) =
                self.integer(table, "aging", "ceiling", (0, i64::from(MAX_PRIORITY)))
            {
                aging.ceiling = u8::try_from(n).unwrap_or(0);
            }
        }

        let mut regions = self.regions(root, pool_no_location);
        regions.roster_policy = roster_policy;

        // Queue names first, so references to any queue can be checked.
        let queues_table = self.table(root, "", "queues").map(|(t, _)| t);
        let queue_names: BTreeSet<String> = queues_table
            .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect())
            .unwrap_or_default();

        let defaults = self.defaults(root, &queue_names);

        let mut queues = BTreeMap::new();
        let mut overflows: BTreeMap<String, (String, Span, String)> = BTreeMap::new();
        let mut categories: BTreeMap<String, String> = BTreeMap::new();
        if let Some(table) = queues_table {
            for (key, value) in table.iter() {
                let name = key.get_ref().to_string();
                let path = join("queues", &name);
                if !self.name(&name, key.span(), &path, "queue") {
                    continue;
                }
                let DeValue::Table(queue_table) = value.get_ref() else {
                    self.wrong_type(value, &path, "a table");
                    continue;
                };
                let (queue, overflow) =
                    self.queue(&name, &path, queue_table, &defaults, &queue_names, &regions);
                if let Some(overflow) = overflow {
                    overflows.insert(name.clone(), overflow);
                }
                categories.insert(name.clone(), name.clone());
                queues.insert(name, queue);
            }
            // Extra categories, after every queue's own name is taken.
            for (key, value) in table.iter() {
                let name = key.get_ref().to_string();
                let path = join("queues", &name);
                let DeValue::Table(queue_table) = value.get_ref() else {
                    continue;
                };
                for (category, span) in self.string_list(queue_table, &path, "categories") {
                    let key = join(&path, "categories");
                    if category.trim().is_empty() || category.len() > MAX_TEXT_BYTES {
                        self.error(
                            span,
                            &key,
                            Kind::InvalidValue,
                            "a category must be 1 to 256 bytes",
                        );
                        continue;
                    }
                    if let Some(owner) = categories.get(&category) {
                        self.error(
                            span,
                            &key,
                            Kind::Duplicate,
                            format!("category `{category}` is already served by queue `{owner}`"),
                        );
                        continue;
                    }
                    categories.insert(category.clone(), name.clone());
                    if let Some(queue) = queues.get_mut(&name) {
                        queue.categories.push(category);
                    }
                }
            }
        }
        self.overflow_cycles(&overflows);

        if let Some((name, span)) = &default_queue
            && !queues.contains_key(name)
        {
            self.unknown_queue(span.clone(), "routing.default_queue", name, &queue_names);
        }

        RoutingConfig {
            file: self.file.to_owned(),
            default_queue: default_queue.map(|(name, _)| name),
            preferred_agent_window_ms,
            penalties,
            aging,
            regions,
            queues,
            categories,
            fingerprint: fnv1a64(self.source.as_bytes()),
        }
    }

    fn unknown_queue(&mut self, span: Span, key: &str, name: &str, known: &BTreeSet<String>) {
        let list = if known.is_empty() {
            "the file defines no queues".to_owned()
        } else {
            format!(
                "queues are: {}",
                known
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        self.error(
            span,
            key,
            Kind::UnknownQueue,
            format!("unknown queue `{name}`; {list}"),
        );
    }

    fn unknown_region(&mut self, span: Span, key: &str, name: &str, regions: &Regions) {
        if self.broken_regions.contains(name) {
            return;
        }
        let broken: Vec<String> = self
            .broken_regions
            .iter()
            .map(|name| format!("{name} (invalid)"))
            .collect();
        let mut names: Vec<&str> = regions
            .names()
            .chain(broken.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        let list = if names.is_empty() {
            "the file defines no regions".to_owned()
        } else {
            format!("regions are: {}", names.join(", "))
        };
        self.error(
            span,
            key,
            Kind::UnknownRegion,
            format!("unknown region `{name}`; {list}"),
        );
    }

    fn regions(&mut self, root: &DeTable<'_>, pool_no_location: NoLocationPolicy) -> Regions {
        let mut regions = Regions::default();
        let Some((table, _)) = self.table(root, "", "regions") else {
            return regions;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().to_string();
            let path = join("regions", &name);
            // Until it parses, a reference to it is no news.
            self.broken_regions.insert(name.clone());
            if !self.name(&name, key.span(), &path, "region") {
                continue;
            }
            let DeValue::Table(region) = value.get_ref() else {
                self.wrong_type(value, &path, "a table");
                continue;
            };
            self.known_keys(region, &path, REGION_KEYS);
            let no_location = self
                .no_location_policy(region, &path)
                .unwrap_or(pool_no_location);
            let wkt = self.string(region, &path, "wkt");
            let geojson = self.string(region, &path, "geojson");
            let (format, text, span, field) = match (wkt, geojson) {
                (Some((text, span)), None) => (PolygonFormat::Wkt, text, span, "wkt"),
                (None, Some((text, span))) => (PolygonFormat::GeoJson, text, span, "geojson"),
                (Some(_), Some((_, span))) => {
                    self.error(
                        span,
                        &join(&path, "geojson"),
                        Kind::InvalidValue,
                        "give the polygon once, as `wkt` or as `geojson`, not both",
                    );
                    continue;
                }
                (None, None) => {
                    if find(region, "wkt").is_none() && find(region, "geojson").is_none() {
                        self.missing(
                            key.span(),
                            &path,
                            "wkt",
                            " (or `geojson`): a region needs a polygon",
                        );
                    }
                    continue;
                }
            };
            match parse_region(&name, format, &text, no_location) {
                Ok(parsed) => {
                    self.broken_regions.remove(&name);
                    regions.by_name.insert(name, parsed);
                }
                Err(problems) => {
                    for (kind, message) in problems {
                        self.error(
                            span.clone(),
                            &join(&path, field),
                            kind,
                            format!("bad polygon: {message}"),
                        );
                    }
                }
            }
        }
        regions
    }

    fn max_wait(
        &mut self,
        table: &DeTable<'_>,
        path: &str,
        span: Span,
        queue_names: &BTreeSet<String>,
    ) -> Option<(MaxWait, Option<(Span, String)>)> {
        self.known_keys(table, path, MAX_WAIT_KEYS);
        let after = self.seconds_as_ms(table, path, "after_seconds", 1);
        if after.is_none() && find(table, "after_seconds").is_none() {
            self.missing(span.clone(), path, "after_seconds", "");
        }
        let Some((action, action_span)) = self.string(table, path, "action") else {
            if find(table, "action").is_none() {
                self.missing(span, path, "action", ": one of expire, overflow, callback");
            }
            return None;
        };
        let only_for = |loader: &mut Self, key: &str, for_action: &str| {
            if let Some((k, _)) = find(table, key) {
                loader.error(
                    k.span(),
                    &join(path, key),
                    Kind::InvalidValue,
                    format!("`{key}` applies only to action = \"{for_action}\""),
                );
            }
        };
        let mut overflow_at = None;
        let action = match action.as_str() {
            "expire" => {
                only_for(self, "queue", "overflow");
                only_for(self, "priority", "callback");
                MaxWaitAction::Expire {
                    reason: self.reason(table, path, "no agent available"),
                }
            }
            "overflow" => {
                only_for(self, "reason", "expire\" or \"callback");
                only_for(self, "priority", "callback");
                let Some((queue, queue_span)) = self.string(table, path, "queue") else {
                    if find(table, "queue").is_none() {
                        self.missing(span, path, "queue", ": overflow needs a target queue");
                    }
                    return None;
                };
                if !queue_names.contains(&queue) {
                    self.unknown_queue(queue_span, &join(path, "queue"), &queue, queue_names);
                    return None;
                }
                overflow_at = Some((queue_span, join(path, "queue")));
                MaxWaitAction::Overflow { queue }
            }
            "callback" => {
                only_for(self, "queue", "overflow");
                let priority = self
                    .integer(table, path, "priority", (0, i64::from(MAX_PRIORITY)))
                    .map_or(0, |(p, _)| u8::try_from(p).unwrap_or(0));
                MaxWaitAction::Callback {
                    priority,
                    reason: self.reason(table, path, "callback promised"),
                }
            }
            other => {
                self.error(
                    action_span,
                    &join(path, "action"),
                    Kind::InvalidValue,
                    format!(
                        "unknown action `{other}`; expected one of: expire, overflow, callback"
                    ),
                );
                return None;
            }
        };
        let (after_ms, _) = after?;
        Some((MaxWait { after_ms, action }, overflow_at))
    }

    fn defaults(&mut self, root: &DeTable<'_>, queue_names: &BTreeSet<String>) -> QueueDefaults {
        let builtin = QueuePolicy::builtin("");
        let mut defaults = QueueDefaults {
            priority: builtin.priority,
            strategy: builtin.strategy,
            offer_timeout_ms: builtin.offer_timeout_ms,
            wrap_up_ms: builtin.wrap_up_ms,
            max_wait: builtin.max_wait,
            overflow_at: None,
        };
        let Some((table, _)) = self.table(root, "", "defaults") else {
            return defaults;
        };
        let path = "defaults";
        self.known_keys(table, path, DEFAULT_KEYS);
        self.common_queue_keys(table, path, &mut defaults);
        if let Some((mw, span)) = self.table(table, path, "max_wait")
            && let Some((max_wait, overflow_at)) =
                self.max_wait(mw, &join(path, "max_wait"), span, queue_names)
        {
            defaults.max_wait = max_wait;
            defaults.overflow_at = overflow_at;
        }
        defaults
    }

    /// Keys queues share with `[defaults]`.
    fn common_queue_keys(&mut self, table: &DeTable<'_>, path: &str, into: &mut QueueDefaults) {
        if let Some((p, _)) = self.integer(table, path, "priority", (0, i64::from(MAX_PRIORITY))) {
            into.priority = u8::try_from(p).unwrap_or(0);
        }
        if let Some(strategy) = self.strategy(table, path) {
            into.strategy = strategy;
        }
        if let Some((ms, _)) = self.integer(table, path, "offer_timeout_seconds", (1, 600)) {
            into.offer_timeout_ms = ms * 1000;
        }
        if let Some((ms, _)) = self.integer(table, path, "wrap_up_seconds", (0, 3600)) {
            into.wrap_up_ms = ms * 1000;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        name: &str,
        path: &str,
        table: &DeTable<'_>,
        defaults: &QueueDefaults,
        queue_names: &BTreeSet<String>,
        regions: &Regions,
    ) -> (QueuePolicy, Option<(String, Span, String)>) {
        self.known_keys(table, path, QUEUE_KEYS);
        let mut own = QueueDefaults {
            priority: defaults.priority,
            strategy: defaults.strategy,
            offer_timeout_ms: defaults.offer_timeout_ms,
            wrap_up_ms: defaults.wrap_up_ms,
            max_wait: defaults.max_wait.clone(),
            overflow_at: defaults.overflow_at.clone(),
        };
        self.common_queue_keys(table, path, &mut own);
        if let Some((mw, span)) = self.table(table, path, "max_wait")
            && let Some((max_wait, overflow_at)) =
                self.max_wait(mw, &join(path, "max_wait"), span, queue_names)
        {
            own.max_wait = max_wait;
            own.overflow_at = overflow_at;
        }
        let overflow = match (&own.max_wait.action, own.overflow_at) {
            (MaxWaitAction::Overflow { queue }, Some((span, key))) => {
                Some((queue.clone(), span, key))
            }
            _ => None,
        };

        let mut skills = Vec::new();
        if let Some((skills_table, _)) = self.table(table, path, "skills") {
            let skills_path = join(path, "skills");
            for (key, value) in skills_table.iter() {
                let skill = key.get_ref().to_string();
                let full = join(&skills_path, &skill);
                if let Err(e) = skill_name(&full, &skill) {
                    self.error(key.span(), &full, Kind::InvalidValue, skill_problem(e));
                    continue;
                }
                if let Some(level) = self.skill_level(value, &full) {
                    skills.push(Skill::new(skill, level));
                }
            }
        }
        skills.sort();

        let mut attributes = BTreeSet::new();
        for (attribute, span) in self.string_list(table, path, "attributes") {
            if attribute.trim().is_empty() || attribute.len() > MAX_NAME_LEN {
                self.error(
                    span,
                    &join(path, "attributes"),
                    Kind::InvalidValue,
                    format!("an attribute must be 1 to {MAX_NAME_LEN} bytes"),
                );
            } else {
                attributes.insert(attribute);
            }
        }

        let relaxation = self.relaxation(table, path, &skills, regions);

        let queue = QueuePolicy {
            name: name.to_owned(),
            categories: Vec::new(),
            skills,
            attributes,
            priority: own.priority,
            strategy: own.strategy,
            offer_timeout_ms: own.offer_timeout_ms,
            wrap_up_ms: own.wrap_up_ms,
            max_wait: own.max_wait,
            relaxation,
        };
        (queue, overflow)
    }

    fn skill_level(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<u8> {
        let Some(level) = parse_integer(value.get_ref()) else {
            self.wrong_type(value, key, "a skill level (an integer 1 to 5)");
            return None;
        };
        if !(1..=5).contains(&level) {
            self.error(
                value.span(),
                key,
                Kind::OutOfRange,
                format!("skill level {level} is out of range; levels are 1 to 5"),
            );
            return None;
        }
        u8::try_from(level).ok()
    }

    fn relaxation(
        &mut self,
        table: &DeTable<'_>,
        path: &str,
        skills: &[Skill],
        regions: &Regions,
    ) -> Vec<RelaxStep> {
        let Some(array) = self.array(table, path, "relax") else {
            return Vec::new();
        };
        let relax_path = join(path, "relax");
        // What the requirements look like so far, to catch tightening.
        let mut levels: BTreeMap<String, (u8, String)> = skills
            .iter()
            .map(|s| (s.name.clone(), (s.level, "the queue's `skills`".to_owned())))
            .collect();
        let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
        let mut previous: Option<(i64, usize)> = None;
        let mut steps = Vec::new();
        for (i, item) in array.iter().enumerate() {
            let step_path = format!("{relax_path}[{i}]");
            let DeValue::Table(step) = item.get_ref() else {
                self.wrong_type(item, &step_path, "a table (a relaxation step)");
                continue;
            };
            self.known_keys(step, &step_path, RELAX_KEYS);
            let after = self.seconds_as_ms(step, &step_path, "after_seconds", 0);
            if after.is_none() && find(step, "after_seconds").is_none() {
                self.missing(item.span(), &step_path, "after_seconds", "");
            }
            if let (Some((after_ms, span)), Some((previous_ms, previous_index))) =
                (&after, previous)
                && *after_ms < previous_ms
            {
                self.error(
                    span.clone(),
                    &join(&step_path, "after_seconds"),
                    Kind::RelaxationOutOfOrder,
                    format!(
                        "step at {} s comes after step {} at {} s; steps must be in time order",
                        after_ms / 1000,
                        previous_index,
                        previous_ms / 1000
                    ),
                );
            }
            if let Some((after_ms, _)) = &after {
                previous = Some((*after_ms, i));
            }
            let actions: Vec<&str> = RELAX_ACTIONS
                .iter()
                .copied()
                .filter(|a| find(step, a).is_some())
                .collect();
            let relaxation = match actions.as_slice() {
                [] => {
                    self.error(
                        item.span(),
                        &step_path,
                        Kind::MissingKey,
                        "a relaxation step needs one action: lower_skill, drop_skill, \
                         widen_language or widen_region",
                    );
                    None
                }
                [action] => self.relax_action(
                    step,
                    &step_path,
                    action,
                    i,
                    &mut levels,
                    &mut dropped,
                    regions,
                ),
                [first, second, ..] => {
                    let span = find(step, second).map_or(item.span(), |(k, _)| k.span());
                    self.error(
                        span,
                        &join(&step_path, second),
                        Kind::InvalidValue,
                        format!("has both `{first}` and `{second}`; give one action per step"),
                    );
                    None
                }
            };
            for (companion, owner) in [("to_level", "lower_skill"), ("from_region", "widen_region")]
            {
                if let Some((k, _)) = find(step, companion)
                    && !actions.contains(&owner)
                {
                    self.error(
                        k.span(),
                        &join(&step_path, companion),
                        Kind::InvalidValue,
                        format!("`{companion}` goes with `{owner}`"),
                    );
                }
            }
            if let (Some((after_ms, _)), Some(relaxation)) = (after, relaxation) {
                steps.push(RelaxStep {
                    after_ms,
                    relaxation,
                });
            }
        }
        steps
    }

    #[allow(clippy::too_many_arguments)]
    fn relax_action(
        &mut self,
        step: &DeTable<'_>,
        step_path: &str,
        action: &str,
        index: usize,
        levels: &mut BTreeMap<String, (u8, String)>,
        dropped: &mut BTreeMap<String, usize>,
        regions: &Regions,
    ) -> Option<Relaxation> {
        let (value, span) = self.string(step, step_path, action)?;
        let key = join(step_path, action);
        match action {
            "lower_skill" => {
                if let Err(e) = skill_name(&key, &value) {
                    self.error(span, &key, Kind::InvalidValue, skill_problem(e));
                    return None;
                }
                let Some((_, level_value)) = find(step, "to_level") else {
                    self.missing(
                        span,
                        step_path,
                        "to_level",
                        ": the level to accept from now on",
                    );
                    return None;
                };
                let to_level = self.skill_level(level_value, &join(step_path, "to_level"))?;
                if let Some(dropped_at) = dropped.get(&value) {
                    self.error(
                        level_value.span(),
                        &join(step_path, "to_level"),
                        Kind::RelaxationTightens,
                        format!(
                            "tightens: `{value}` was dropped by step {dropped_at}; \
                             requiring it again at level {to_level} would be stricter"
                        ),
                    );
                    return None;
                }
                if let Some((current, source)) = levels.get(&value)
                    && to_level > *current
                {
                    self.error(
                        level_value.span(),
                        &join(step_path, "to_level"),
                        Kind::RelaxationTightens,
                        format!(
                            "tightens: raises `{value}` from level {current} (set by {source}) \
                             to {to_level}; a relaxation step may only lower a level"
                        ),
                    );
                    return None;
                }
                levels.insert(value.clone(), (to_level, format!("step {index}")));
                Some(Relaxation::LowerSkill {
                    skill: value,
                    to_level,
                })
            }
            "drop_skill" => {
                if let Err(e) = skill_name(&key, &value) {
                    self.error(span, &key, Kind::InvalidValue, skill_problem(e));
                    return None;
                }
                dropped.entry(value.clone()).or_insert(index);
                Some(Relaxation::DropSkill { skill: value })
            }
            "widen_language" => match value.as_str() {
                "parent" => Some(Relaxation::WidenLanguage(LanguageWidening::Parent)),
                "primary" => Some(Relaxation::WidenLanguage(LanguageWidening::Primary)),
                other => {
                    self.error(
                        span,
                        &key,
                        Kind::InvalidValue,
                        format!(
                            "unknown language widening `{other}`; expected `parent` (de-at → de) \
                             or `primary` (zh-hant-tw → zh)"
                        ),
                    );
                    None
                }
            },
            "widen_region" => {
                let to = regions.get(&value);
                if to.is_none() {
                    self.unknown_region(span.clone(), &key, &value, regions);
                }
                let from_key = join(step_path, "from_region");
                let Some((from_name, from_span)) = self.string(step, step_path, "from_region")
                else {
                    if find(step, "from_region").is_none() {
                        self.missing(
                            span,
                            step_path,
                            "from_region",
                            ": the region whose conversations widen to this one",
                        );
                    }
                    return None;
                };
                let from = regions.get(&from_name);
                if from.is_none() {
                    self.unknown_region(from_span.clone(), &from_key, &from_name, regions);
                }
                let (Some(to), Some(from)) = (to, from) else {
                    return None;
                };
                if !to.covers(from) {
                    self.error(
                        span,
                        &key,
                        Kind::RelaxationTightens,
                        format!(
                            "tightens: region `{value}` does not cover region `{from_name}`; \
                             widening must go to a region that contains it"
                        ),
                    );
                    return None;
                }
                Some(Relaxation::WidenRegion {
                    from: from_name,
                    to: value,
                })
            }
            _ => None,
        }
    }

    /// Reports each overflow cycle once, at the smallest queue name in it.
    fn overflow_cycles(&mut self, overflows: &BTreeMap<String, (String, Span, String)>) {
        let mut reported: BTreeSet<String> = BTreeSet::new();
        for start in overflows.keys() {
            let mut path = vec![start.clone()];
            let mut current = start;
            while let Some((next, _, _)) = overflows.get(current) {
                if let Some(pos) = path.iter().position(|q| q == next) {
                    let cycle = &path[pos..];
                    let smallest = cycle.iter().min().cloned().unwrap_or_default();
                    if reported.insert(smallest.clone())
                        && let Some((_, span, key)) = overflows.get(&smallest)
                    {
                        let start_at = cycle.iter().position(|q| *q == smallest).unwrap_or(0);
                        let mut names: Vec<&str> = cycle[start_at..]
                            .iter()
                            .chain(&cycle[..start_at])
                            .map(String::as_str)
                            .collect();
                        names.push(&smallest);
                        self.error(
                            span.clone(),
                            key,
                            Kind::OverflowCycle,
                            format!(
                                "overflow cycle {}: a conversation would move between these queues forever",
                                names.join(" → ")
                            ),
                        );
                    }
                    break;
                }
                if path.len() > overflows.len() {
                    break;
                }
                path.push(next.clone());
                current = next;
            }
        }
    }
}

/// FNV-1a, 64 bits: a stable digest with no dependency; not for security.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn skill_problem(error: switchboard_core::DomainError) -> String {
    match error {
        switchboard_core::DomainError::Invalid { reason, .. } => {
            format!("bad skill name: {reason}")
        }
        other => other.to_string(),
    }
}
