//! A fixed, deterministic hand-off workload against a Redis you started,
//! for measuring what the dispatch library costs Redis per hand-off.
//!
//! ```sh
//! redis-server --port 16420 --save "" --appendonly no &
//! cargo run --release -p switchboard-store-redis --example handoff_workload -- redis://127.0.0.1:16420/ 2000
//! ```
//!
//! Arguments: the Redis URL, the number of steps (default 2,000), the
//! number of agents (default 500), and optionally `--callgrind <pid>`
//! (runs `callgrind_control -i on <pid>` once the agents are online and
//! `-i off` before the report, so a
//! `redis-server` started under `valgrind --tool=callgrind
//! --instr-atstart=no` counts only the workload).
//!
//! The clock is pinned and moves 5 ms per step (200 hand-offs/s of store
//! time); the agent population and the arrivals follow the load tool's
//! reference profile (4 of 8 skills at levels 2 to 5, English plus German
//! or Spanish at 30% each, capacity 1) from a fixed seed. Each step
//! requests one conversation; an offer is delivered at once and accepted
//! 200 ms later, completed 0.5 to 1.5 s after that; one heartbeat every
//! other step and one sweep every 10 steps, with offer timeout, maximum
//! wait and retention short enough (2, 3, 4 s) that the deadlines each
//! hand-off leaves come due within the 1,000 warm-up steps that precede
//! the measured ones. The Redis is flushed first.
//! At the end it prints Redis's own time per FCALL (`INFO commandstats`)
//! and per command (`SLOWLOG`, threshold 0), per step.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use switchboard_core::event::EventKind;
use switchboard_core::model::{GoOnline, Handoff, RosterEntry, Skill};
use switchboard_core::{DispatchSettings, Event, OfferId, PoolId, Timestamp};
use switchboard_store::Store;
use switchboard_store::conformance::{agent, cid};
use switchboard_store_redis::{RedisOptions, RedisStore};

const CATEGORIES: [(&str, u64, u8); 8] = [
    ("billing", 30, 2),
    ("tech_support", 20, 3),
    ("returns", 15, 2),
    ("shipping", 10, 2),
    ("accounts", 10, 3),
    ("complaints", 8, 3),
    ("fraud", 4, 4),
    ("sales", 3, 2),
];
const LANGUAGES: [(&str, u64); 3] = [("en", 80), ("de", 12), ("es", 8)];
const STEP_MS: i64 = 5;

/// A small deterministic generator (xorshift64*), so runs repeat exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn weighted(&mut self, weights: impl Iterator<Item = u64> + Clone) -> usize {
        let total: u64 = weights.clone().sum();
        let mut pick = self.below(total);
        for (i, w) in weights.enumerate() {
            if pick < w {
                return i;
            }
            pick -= w;
        }
        0
    }
}

enum Due {
    Accept(String, OfferId),
    Complete(String, String),
}

fn offers_in(
    events: &[Event],
    due: &mut BTreeMap<u64, Vec<Due>>,
    step: u64,
    delivered: &mut Vec<(String, OfferId)>,
) {
    for e in events {
        if let EventKind::Offered { offer, .. } = &e.kind
            && let Some(a) = &e.agent_id
        {
            delivered.push((a.to_string(), offer.clone()));
            due.entry(step + 40)
                .or_default()
                .push(Due::Accept(a.to_string(), offer.clone()));
        }
    }
}

struct Driver<'a> {
    store: &'a RedisStore,
    pool: &'a PoolId,
    rng: Rng,
    ids: &'a [String],
    due: BTreeMap<u64, Vec<Due>>,
    calls: BTreeMap<&'static str, u64>,
    completed: u64,
    heartbeat_next: usize,
    pending_delivery: Vec<(String, OfferId)>,
}

impl Driver<'_> {
    async fn deliver(&mut self) {
        for (a, offer) in std::mem::take(&mut self.pending_delivery) {
            self.store
                .offer_delivered(self.pool, &agent(&a), &offer)
                .await
                .unwrap();
            *self.calls.entry("offer_delivered").or_default() += 1;
        }
    }

    async fn step(&mut self, step: u64) {
        let (store, pool) = (self.store, self.pool);
        let now = 1_800_000_000_000i64 + 10_000 + step as i64 * STEP_MS;
        store.pin_clock(Timestamp::from_millis(now));
        let rng = &mut self.rng;
        let category = rng.weighted(CATEGORIES.iter().map(|c| c.1));
        let language = rng.weighted(LANGUAGES.iter().map(|l| l.1));
        let id = format!("conv-{step:07}");
        let handoff = Handoff {
            conversation_id: cid(&id),
            customer_id: format!("customer-{}", rng.below(100_000)),
            language: LANGUAGES[language].0.into(),
            category: CATEGORIES[category].0.into(),
            required_skills: vec![Skill::new(CATEGORIES[category].0, CATEGORIES[category].2)],
            priority: 1,
            summary: "customer asked for a human about an order".into(),
            attributes: Default::default(),
            customer_asked_for_human: true,
            chat_reference: format!("chat://load/{id}"),
            preferred_agent: None,
            region: None,
            customer_location: None,
        };
        let applied = store.request(pool, handoff).await.unwrap();
        *self.calls.entry("request").or_default() += 1;
        offers_in(
            &applied.events,
            &mut self.due,
            step,
            &mut self.pending_delivery,
        );
        self.deliver().await;
        if step.is_multiple_of(2) {
            let a = &self.ids[self.heartbeat_next % self.ids.len()];
            self.heartbeat_next += 1;
            store.heartbeat(pool, &agent(a), None).await.unwrap();
            *self.calls.entry("heartbeat").or_default() += 1;
        }
        if step.is_multiple_of(10) {
            let applied = store.sweep().await.unwrap();
            *self.calls.entry("sweep").or_default() += 1;
            offers_in(
                &applied.events,
                &mut self.due,
                step,
                &mut self.pending_delivery,
            );
        }
        for action in self.due.remove(&step).unwrap_or_default() {
            match action {
                Due::Accept(a, offer) => {
                    let applied = store.accept(pool, &agent(&a), &offer).await.unwrap();
                    *self.calls.entry("accept").or_default() += 1;
                    offers_in(
                        &applied.events,
                        &mut self.due,
                        step,
                        &mut self.pending_delivery,
                    );
                    let hold = 100 + self.rng.below(200);
                    self.due
                        .entry(step + hold)
                        .or_default()
                        .push(Due::Complete(a, offer.conversation_id.to_string()));
                }
                Due::Complete(a, c) => {
                    let applied = store
                        .complete(pool, &agent(&a), &cid(&c), "resolved")
                        .await
                        .unwrap();
                    *self.calls.entry("complete").or_default() += 1;
                    self.completed += 1;
                    offers_in(
                        &applied.events,
                        &mut self.due,
                        step,
                        &mut self.pending_delivery,
                    );
                }
            }
        }
        self.deliver().await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut callgrind = None;
    if let Some(i) = args.iter().position(|a| a == "--callgrind") {
        callgrind = Some(args[i + 1].clone());
        args.drain(i..=i + 1);
    }
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:16420/".into());
    let steps: u64 = args.get(1).map_or(2_000, |s| s.parse().unwrap());
    let agents: usize = args.get(2).map_or(500, |s| s.parse().unwrap());

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();

    let options = RedisOptions {
        // Under callgrind Redis is slow: never take that for an outage.
        outage_threshold: std::time::Duration::from_secs(3_600),
        ..RedisOptions::default()
    };
    // Short offer timeout, maximum wait and retention, so that every
    // deadline a hand-off leaves behind (delivery, offer timeout, maximum
    // wait, retention) comes due within the warm-up, as in a long run.
    let settings = DispatchSettings {
        offer_timeout_ms: 2_000,
        max_wait_ms: 3_000,
        retention_ms: 4_000,
        ..DispatchSettings::default()
    };
    let store = RedisStore::connect_with(&url, settings, options)
        .await
        .unwrap();
    let mut now = 1_800_000_000_000i64;
    store.pin_clock(Timestamp::from_millis(now));
    let pool = PoolId::parse("pool", "bench").unwrap();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);

    let mut ids = Vec::new();
    for i in 0..agents {
        let id = format!("agent-{i:05}");
        let mut all: Vec<usize> = (0..CATEGORIES.len()).collect();
        for k in 0..4 {
            let other = k + rng.below((all.len() - k) as u64) as usize;
            all.swap(k, other);
        }
        let skills = all[..4]
            .iter()
            .map(|&s| Skill::new(CATEGORIES[s].0, 2 + rng.below(4) as u8))
            .collect();
        let mut languages = vec!["en".to_owned()];
        for (language, _) in &LANGUAGES[1..] {
            if rng.below(10) < 3 {
                languages.push((*language).to_owned());
            }
        }
        let entry = RosterEntry {
            agent_id: agent(&id),
            display_name: id.to_uppercase(),
            skills,
            languages,
            max_capacity: 1,
            allowed_regions: vec![],
            attributes: vec![],
            token_epoch: 0,
        };
        store.upsert_roster(&pool, entry).await.unwrap();
        store
            .go_online(&pool, &agent(&id), GoOnline::default(), false)
            .await
            .unwrap();
        store.attach_stream(&pool, &agent(&id)).await.unwrap();
        now += 1;
        store.pin_clock(Timestamp::from_millis(now));
        ids.push(id);
    }

    let mut step = 0u64;
    let mut driver = Driver {
        store: &store,
        pool: &pool,
        rng,
        ids: &ids,
        due: BTreeMap::new(),
        calls: BTreeMap::new(),
        completed: 0,
        heartbeat_next: 0,
        pending_delivery: Vec::new(),
    };
    // Warm-up: 1,000 steps (5 s of store time), not measured.
    while step < 1_000 {
        driver.step(step).await;
        step += 1;
    }
    driver.calls.clear();
    driver.completed = 0;

    // SLOWLOG for every call gives the per-command table; under callgrind
    // it is left off (copying each FCALL's arguments into the log was 6%
    // of the instructions counted).
    let slowlog_threshold = if callgrind.is_some() { -1 } else { 0 };
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(slowlog_threshold)
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(1_000_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    if let Some(pid) = &callgrind {
        let status = std::process::Command::new("callgrind_control")
            .args(["-i", "on", pid])
            .status()
            .unwrap();
        assert!(status.success(), "callgrind_control -i on {pid}");
    }

    for _ in 0..steps {
        driver.step(step).await;
        step += 1;
    }
    let (calls, completed) = (driver.calls, driver.completed);

    if let Some(pid) = &callgrind {
        let status = std::process::Command::new("callgrind_control")
            .args(["-i", "off", pid])
            .status()
            .unwrap();
        assert!(status.success(), "callgrind_control -i off {pid}");
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    let fcall = info
        .lines()
        .find(|l| l.starts_with("cmdstat_fcall:"))
        .unwrap_or("")
        .to_owned();
    let field = |name: &str| -> f64 {
        fcall
            .split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (fcalls, usec) = (field("calls"), field("usec"));
    println!("steps {steps} (after 1,000 warm-up steps), agents {agents}, completed {completed}");
    println!("calls: {calls:?}");
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        let name = line
            .trim_start_matches("cmdstat_")
            .split(':')
            .next()
            .unwrap_or("");
        let calls: f64 = line
            .split([':', ','])
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        print!("{name} {:.2}/step  ", calls / steps as f64);
    }
    println!();
    println!(
        "FCALL {fcalls}, {:.2} per step, {:.1} µs per FCALL, {:.0} µs of Redis per step",
        fcalls / steps as f64,
        usec / fcalls.max(1.0),
        usec / steps as f64
    );

    // A plain connection: the reply is large, and has no response timeout.
    let mut plain = client.get_connection().unwrap();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(&mut plain)
        .unwrap();
    let mut by_command: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(argv))) =
            (fields.get(2), fields.get(3))
        else {
            continue;
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        if argv
            .first()
            .map(text)
            .is_some_and(|c| c.eq_ignore_ascii_case("fcall"))
        {
            let command = argv.get(4).map(text).unwrap_or_default();
            by_command.entry(command).or_default().push(*micros);
        }
    }
    println!(
        "{:<16} {:>7} {:>8} {:>8} {:>10}",
        "command", "calls", "p50 µs", "mean µs", "µs/step"
    );
    for (command, mut micros) in by_command {
        micros.sort_unstable();
        let total: i64 = micros.iter().sum();
        println!(
            "{:<16} {:>7} {:>8} {:>8.1} {:>10.1}",
            command,
            micros.len(),
            micros[micros.len() / 2],
            total as f64 / micros.len() as f64,
            total as f64 / steps as f64
        );
    }
}
