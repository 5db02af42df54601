//! Faults with several real `switchboard` replicas on one Redis (issue 4,
//! "Faults"): a replica killed with SIGKILL, Redis killed and restarted
//! (AOF, fsync every second) during traffic, a replica whose clock is 10 s
//! fast. Short leases (1 s) so a lapse would show within a second; every
//! wait is for an event or a state, with generous bounds for a loaded
//! machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::DispatchSettings;
use switchboard_e2e::replicas::*;
use switchboard_e2e::*;
use switchboard_proto::v1::agent_event::Kind;
use switchboard_testkit::RedisServer;
use tokio::time::Instant;
use tonic::{Code, Status};

/// Generous for a loaded 2-core machine.
const LONG_WAIT: Duration = Duration::from_secs(15);
/// No call may take longer than this, outage or not: the store bounds each
/// of its calls to Redis (`RedisOptions::call_timeout`, 2 s: waiting for a
/// reconnect, the reply, a read's one retry), and a call made while Redis
/// is down fails as soon as the connection manager's short reconnect
/// attempt has (it goes on reconnecting in the background). 3 s leaves
/// room for the gRPC hop on a loaded machine.
const CALL_BOUND: Duration = Duration::from_secs(3);

/// Accepts every offer that reaches `app` until aborted; never panics on
/// errors (the replica may be gone). Returns nothing: the test reads the
/// outcome from the store.
fn accept_every_offer(mut app: AgentApp) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        while let Ok(Some(event)) = app.events.message().await {
            if event.seq > 0 && !seen.insert((event.conversation_id.clone(), event.seq)) {
                continue;
            }
            if let Some(Kind::Offer(offer)) = event.kind {
                let _ = app.accept(&offer).await;
            }
        }
    })
}

/// The offer in `app`'s snapshot, or the next one on its stream.
async fn first_offer(app: &mut AgentApp) -> Offer {
    match app.snapshot.offers.first() {
        Some(offer) => offer.clone(),
        None => app.expect_offer().await,
    }
}

/// `kill -9` of one replica while its agents hold conversations: those who
/// resume on the other replica within the lease keep theirs; the one who
/// never comes back loses its conversation to another agent after the
/// lease (nothing lost); new hand-offs keep flowing; no conversation is
/// ever held by two agents.
#[tokio::test]
async fn a_killed_replica_costs_its_agents_a_reconnect_and_nothing_more() {
    let redis = RedisServer::start().await;
    let settings = DispatchSettings {
        // Accepting four offers one after the other on a loaded machine
        // must not race the offer timeout; leases stay short.
        offer_timeout_ms: 3_000,
        offer_delivery_grace_ms: 1_500,
        ..fault_settings()
    };
    let mut a = start_replica(&redis.url(), &settings, &[]).await;
    let b = start_replica(&redis.url(), &settings, &[]).await;
    let mut gateway = b.gateway().await;
    let beat = Duration::from_millis(100);

    // a1..a3 on A, b1 on B; each takes one of four conversations.
    let ids = ["a1", "a2", "a3", "b1"];
    let mut apps = Vec::new();
    let mut heartbeats = HashMap::new();
    for id in ids {
        let replica = if id.starts_with('a') { &a } else { &b };
        apps.push(replica.agent(id, &[("billing", 3)]).await);
        heartbeats.insert(id, Heartbeats::start(replica.agent_client(id).await, beat));
    }
    for i in 1..=4 {
        gateway
            .request_agent(handoff(&format!("conv-{i}"), "billing", 3))
            .await
            .unwrap();
    }
    let mut holding = HashMap::new();
    for app in &mut apps {
        let offer = first_offer(app).await;
        let conversation = app.accept(&offer).await.unwrap();
        holding.insert(app.id.clone(), conversation.conversation_id);
    }
    let held: HashSet<&String> = holding.values().collect();
    assert_eq!(
        held.len(),
        4,
        "four agents, four conversations: {holding:?}"
    );

    // Two spare agents on B, and the apps of a1 and a2 ready to reconnect
    // there (a load balancer would send them to B).
    let spares = [
        accept_every_offer(b.agent("b2", &[("billing", 3)]).await),
        accept_every_offer(b.agent("b3", &[("billing", 3)]).await),
    ];
    let _spare_beats = [
        Heartbeats::start(b.agent_client("b2").await, beat),
        Heartbeats::start(b.agent_client("b3").await, beat),
    ];
    let a1_on_b = b.agent_client("a1").await;
    let a2_on_b = b.agent_client("a2").await;

    a.kill().await;
    let killed_at = Instant::now();
    // a1 and a2 resume on B at once; a3's app is gone for good.
    heartbeats.insert("a1", Heartbeats::start(a1_on_b.clone(), beat));
    heartbeats.insert("a2", Heartbeats::start(a2_on_b.clone(), beat));
    heartbeats.remove("a3");
    drop(apps);
    for (id, client) in [("a1", a1_on_b), ("a2", a2_on_b)] {
        let resumed = AgentApp::subscribe(id, client).await;
        let assignments: Vec<&str> = resumed
            .snapshot
            .assignments
            .iter()
            .map(|c| c.conversation_id.as_str())
            .collect();
        assert_eq!(
            assignments,
            [holding[id].as_str()],
            "{id} resumes on B with its conversation"
        );
    }
    // New load while A is dead.
    gateway
        .request_agent(handoff("conv-5", "billing", 3))
        .await
        .unwrap();

    // a3's conversation goes to a spare once its lease lapses; conv-5 to the
    // other spare.
    let lost = holding["a3"].clone();
    let view = wait_conversation(&mut gateway, &lost, LONG_WAIT, |v| {
        is_assigned(v) && v.agent_id != "a3"
    })
    .await;
    assert!(["b2", "b3"].contains(&view.agent_id.as_str()), "{view:?}");
    let fifth = wait_conversation(&mut gateway, "conv-5", LONG_WAIT, is_assigned).await;
    assert_ne!(fifth.agent_id, view.agent_id, "one agent, capacity 1");

    // Well past a lease after the kill, with a1 and a2 heartbeating through
    // B all along: they still hold what they held.
    for id in ["a1", "a2"] {
        heartbeats[id].wait_beats(5, LONG_WAIT).await;
    }
    let lease = Duration::from_millis(settings.lease_ms as u64);
    while killed_at.elapsed() < 2 * lease {
        heartbeats["a1"].wait_beats(1, LONG_WAIT).await;
    }
    for id in ["a1", "a2", "b1"] {
        let view = get_conversation(&mut gateway, &holding[id]).await.unwrap();
        assert!(is_assigned(&view), "{id}: {view:?}");
        assert_eq!(view.agent_id, id, "{id} kept its conversation");
    }

    // The log: only a3's conversation was ever requeued; every conversation
    // has exactly one holder, and no agent holds more than its capacity.
    let events = pool_events(&redis).await;
    for id in ["a1", "a2", "b1"] {
        assert_eq!(count_events(&events, &holding[id], "requeued"), 0, "{id}");
    }
    assert_eq!(count_events(&events, &lost, "requeued"), 1);
    let mut holders: HashMap<String, String> = HashMap::new();
    for i in 1..=5 {
        let id = format!("conv-{i}");
        let view = get_conversation(&mut gateway, &id).await.unwrap();
        assert!(is_assigned(&view), "{id}: {view:?}");
        if let Some(other) = holders.insert(view.agent_id.clone(), id.clone()) {
            panic!("{} holds both {other} and {id}", view.agent_id);
        }
    }
    let agents = b
        .admin()
        .await
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    for agent in &agents {
        assert!(agent.active_conversations <= 1, "{agent:?}");
    }
    for spare in spares {
        spare.abort();
    }
}

/// What one call during the Redis test returned, and how long it took.
#[derive(Debug)]
struct CallRecord {
    what: &'static str,
    code: Code,
    message: String,
    took: Duration,
}

type Records = Arc<Mutex<Vec<CallRecord>>>;

/// An UNAVAILABLE a gateway can act on: it names the store and says to
/// retry.
fn assert_clear_unavailable(message: &str) {
    assert!(
        message.contains("unavailable") && message.contains("retry") && message.contains("redis"),
        "unclear UNAVAILABLE message: {message}"
    );
}

/// Times a call and records its outcome.
async fn timed<T>(
    records: &Records,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = tokio::time::timeout(CALL_BOUND, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than {CALL_BOUND:?}"));
    let (code, message) = match &result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    };
    records.lock().unwrap().push(CallRecord {
        what,
        code,
        message,
        took: started.elapsed(),
    });
    result
}

fn confirmed(view: &Conversation) -> bool {
    view.state == ConversationState::Assigned as i32
        || view.state == ConversationState::Completed as i32
}

/// The gateway's side of the durability contract: RequestAgent (idempotent
/// by conversation id), retried on UNAVAILABLE, until a watch event shows a
/// human has the conversation. Alternates replicas, as a load balancer may.
async fn hand_off_until_confirmed(urls: [String; 2], id: String, records: Records) -> Instant {
    let mut attempt = 0usize;
    loop {
        let url = &urls[attempt % 2];
        attempt += 1;
        let mut gateway = gateway_at(url).await;
        if timed(
            &records,
            "RequestAgent",
            gateway.request_agent(handoff(&id, "billing", 3)),
        )
        .await
        .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let watch = timed(
            &records,
            "WatchConversation",
            gateway.watch_conversation(WatchConversationRequest {
                conversation_id: id.clone(),
            }),
        )
        .await;
        let Ok(watch) = watch else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut watch = watch.into_inner();
        // A silent watch (events lost with the crash) is given up after a
        // while and the hand-off re-sent.
        while let Ok(Ok(Some(event))) =
            tokio::time::timeout(Duration::from_secs(3), watch.message()).await
        {
            if event.conversation.as_ref().is_some_and(confirmed) {
                return Instant::now();
            }
        }
    }
}

/// An agent app that accepts every offer and completes at once, heartbeats
/// all along, and resubscribes when its stream ends; errors are recorded,
/// never fatal.
fn busy_agent(url: String, id: &'static str, records: Records) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = agent_client_at(&url, id).await;
        let _beats = Heartbeats::start(client.clone(), Duration::from_millis(100));
        let mut seen = HashSet::new();
        loop {
            let Ok(stream) =
                timed(&records, "Subscribe", client.subscribe(SubscribeRequest {})).await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                if event.seq > 0 && !seen.insert((event.conversation_id.clone(), event.seq)) {
                    continue;
                }
                let offers = match event.kind {
                    Some(Kind::Offer(offer)) => vec![offer],
                    Some(Kind::Snapshot(snapshot)) => snapshot.offers,
                    _ => continue,
                };
                for offer in offers {
                    let accepted = timed(
                        &records,
                        "AcceptOffer",
                        client.accept_offer(AcceptOfferRequest {
                            offer_id: offer.offer_id.clone(),
                        }),
                    )
                    .await;
                    if let Ok(accepted) = accepted {
                        let conversation = accepted.into_inner().conversation.unwrap();
                        let _ = timed(
                            &records,
                            "CompleteConversation",
                            client.complete_conversation(CompleteConversationRequest {
                                conversation_id: conversation.conversation_id,
                                disposition: "resolved".into(),
                            }),
                        )
                        .await;
                    }
                }
            }
        }
    })
}

/// Starts one hand-off every 100 ms until `stop`; returns them all.
fn traffic(
    urls: [String; 2],
    records: Records,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, tokio::task::JoinHandle<Instant>)>> {
    tokio::spawn(async move {
        let mut handoffs = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let id = format!("conv-{}", handoffs.len());
            let task = tokio::spawn(hand_off_until_confirmed(
                urls.clone(),
                id.clone(),
                records.clone(),
            ));
            handoffs.push((id, task));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        handoffs
    })
}

/// Redis is SIGKILLed during traffic and restarted from its append-only
/// file on the same port. Calls meanwhile fail fast with UNAVAILABLE (no
/// hang, no panic); the replicas reconnect by themselves; no agent's lease
/// expires because of the outage; gateways that retry RequestAgent until a
/// watch event confirms lose nothing end to end.
#[tokio::test]
async fn a_redis_crash_and_restart_loses_nothing_a_retrying_gateway_sent() {
    let mut redis = RedisServer::start_with_aof().await;
    let settings = fault_settings();
    let mut a = start_replica(&redis.url(), &settings, &[]).await;
    let mut b = start_replica(&redis.url(), &settings, &[]).await;
    let urls = [a.url.clone(), b.url.clone()];
    let records: Records = Arc::default();

    let agent_ids = ["ann", "ben", "cat", "dan"];
    let mut agents = Vec::new();
    for (i, id) in agent_ids.into_iter().enumerate() {
        let mut client = agent_client_at(&urls[i % 2], id).await;
        client
            .go_online(GoOnlineRequest {
                skills: vec![Skill {
                    name: "billing".into(),
                    level: 3,
                }],
                languages: vec!["en".into()],
                capacity: 1,
                location: None,
            })
            .await
            .unwrap();
        agents.push(busy_agent(urls[i % 2].clone(), id, records.clone()));
    }
    let online_since = |agents: Vec<AgentPresence>| -> HashMap<String, u64> {
        agents
            .into_iter()
            .map(|p| (p.agent_id, p.online_since_ms))
            .collect()
    };
    let mut admin = a.admin().await;
    let before = online_since(
        admin
            .list_agents(ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents,
    );
    assert_eq!(before.len(), agent_ids.len(), "{before:?}");

    // Traffic before, during and after the outage. More than a second of it
    // before the crash, so the agents' going online is on disk (everysec).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = traffic(urls.clone(), records.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    redis.kill();
    let crashed_at = Instant::now();
    // Longer than a lease: without the outage rule every agent would lapse.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    redis.restart().await;
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let handoffs = load.await.unwrap();

    // Every hand-off is confirmed, by the replicas as they are: never
    // restarted.
    let mut confirmed_at = HashMap::new();
    for (id, task) in handoffs {
        let at = tokio::time::timeout(LONG_WAIT, task)
            .await
            .unwrap_or_else(|_| panic!("{id} never confirmed after the restart"))
            .unwrap();
        confirmed_at.insert(id, at);
    }
    // The documented gateway rule after an outage: re-send (idempotently)
    // what was confirmed in the last seconds before it, since Redis may have
    // lost up to about a second of acknowledged writes.
    let mut recreated = Vec::new();
    let mut gateway = b.gateway().await;
    for (id, at) in &confirmed_at {
        if *at + Duration::from_secs(2) > crashed_at {
            let ticket = timed(
                &records,
                "RequestAgent (re-sent)",
                gateway.request_agent(handoff(id, "billing", 3)),
            )
            .await
            .unwrap()
            .into_inner();
            if ticket.created {
                recreated.push(id.clone());
            }
        }
    }
    for id in confirmed_at.keys() {
        wait_conversation(&mut gateway, id, LONG_WAIT, confirmed).await;
    }

    // The outage was felt, as UNAVAILABLE with a clear message, fast.
    let records = std::mem::take(&mut *records.lock().unwrap());
    let slowest_ok = records
        .iter()
        .filter(|r| r.code == Code::Ok)
        .map(|r| r.took)
        .max()
        .unwrap_or_default();
    let records: Vec<CallRecord> = records.into_iter().filter(|r| r.code != Code::Ok).collect();
    eprintln!("slowest successful call {slowest_ok:?}; failures: {records:#?}");
    // Calls made while Redis was down fail with UNAVAILABLE, or succeed if
    // Redis came back meanwhile (see the next test); whichever, with a
    // clear message and within the bound (`timed` panics past it).
    let unavailable: Vec<&CallRecord> = records
        .iter()
        .filter(|r| r.code == Code::Unavailable)
        .collect();
    for record in &unavailable {
        assert_clear_unavailable(&record.message);
    }
    for record in &records {
        assert!(
            !matches!(
                record.code,
                Code::Internal | Code::Unknown | Code::DeadlineExceeded
            ),
            "{record:?}"
        );
        if record.what.starts_with("RequestAgent") || record.what == "WatchConversation" {
            assert_eq!(record.code, Code::Unavailable, "{record:?}");
        }
    }
    let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();

    // No lease expired because of the outage: the same sessions, online.
    let after = online_since(
        admin
            .list_agents(ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents,
    );
    assert_eq!(after, before, "an agent's session ended during the outage");
    assert!(a.is_running() && b.is_running(), "a replica died");
    for replica in [&a, &b] {
        assert!(!replica.log().contains("panicked"), "{}", replica.log());
    }
    for agent in agents {
        agent.abort();
    }
    eprintln!(
        "{} hand-offs confirmed; {} calls failed ({} UNAVAILABLE), slowest failure {slowest:?}; \
         re-created after the crash: {recreated:?}; outage {:?}",
        confirmed_at.len(),
        records.len(),
        unavailable.len(),
        restarted_at - crashed_at,
    );
}

/// While Redis is down a command and a read each get UNAVAILABLE with a
/// message a gateway can act on, within [`CALL_BOUND`] (never a panic, never
/// a hang), for as long as the outage lasts; once Redis is back on the same
/// port the replica serves again by itself, with what Redis kept on disk.
#[tokio::test]
async fn a_call_while_redis_is_down_gets_unavailable_and_the_replica_recovers_alone() {
    let mut redis = RedisServer::start_with_aof().await;
    // Offers must not be withdrawn as undelivered on a loaded machine.
    let settings = DispatchSettings {
        offer_timeout_ms: 5_000,
        offer_delivery_grace_ms: 2_000,
        ..fast_settings()
    };
    let mut replica = start_replica(&redis.url(), &settings, &[]).await;
    let mut gateway = replica.gateway().await;
    gateway
        .request_agent(handoff("before", "billing", 3))
        .await
        .unwrap();
    // everysec: what was written more than a second ago is on disk.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    redis.kill();
    let records: Records = Arc::default();
    // The first calls meet the dropped connection, later ones the
    // reconnect attempts: probed over a few seconds of outage, every one
    // answers UNAVAILABLE within the bound.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(4) {
        let refused = timed(
            &records,
            "RequestAgent",
            gateway.request_agent(handoff("during", "billing", 3)),
        )
        .await
        .expect_err("no store, no hand-off");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_clear_unavailable(refused.message());
        let refused = timed(
            &records,
            "GetConversation",
            get_conversation(&mut gateway, "before"),
        )
        .await
        .expect_err("no store, no read");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_clear_unavailable(refused.message());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let slowest = {
        let records = records.lock().unwrap();
        eprintln!("during the outage: {records:#?}");
        records.iter().map(|r| r.took).max().unwrap_or_default()
    };
    assert!(
        slowest < CALL_BOUND,
        "a call during the outage took {slowest:?}"
    );
    assert!(replica.is_running(), "the replica survived the outage");

    redis.restart().await;
    // The gateway retries (idempotently) until the store answers again.
    let deadline = Instant::now() + LONG_WAIT;
    let ticket = loop {
        match timed(
            &records,
            "RequestAgent",
            gateway.request_agent(handoff("during", "billing", 3)),
        )
        .await
        {
            Ok(ticket) => break ticket.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "the replica never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(ticket.created);
    let kept = get_conversation(&mut gateway, "before").await.unwrap();
    assert_eq!(kept.state, ConversationState::Queued as i32, "{kept:?}");

    // Streams and matching work again: an agent gets both, in order.
    let mut agent = replica.agent("eve", &[("billing", 3)]).await;
    let offer = first_offer(&mut agent).await;
    assert_eq!(offer.offer_id.as_ref().unwrap().conversation_id, "before");
    agent.accept(&offer).await.unwrap();
    agent.complete("before").await.unwrap();
    let offer = agent.expect_offer().await;
    assert_eq!(offer.offer_id.as_ref().unwrap().conversation_id, "during");
    agent.accept(&offer).await.unwrap();
    assert!(replica.is_running());
    assert!(!replica.log().contains("panicked"), "{}", replica.log());
}

fn wall_clock_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A replica whose own clock is 10 s fast (test-only skew) expires nothing
/// early: offers, leases and timestamps come from Redis's clock, whichever
/// replica takes the call or runs the sweep.
#[tokio::test]
async fn a_replica_ten_seconds_fast_expires_nothing_early() {
    let redis = RedisServer::start().await;
    let settings = DispatchSettings {
        offer_timeout_ms: 2_000,
        offer_delivery_grace_ms: 1_500,
        ..fault_settings()
    };
    let _a = start_replica(&redis.url(), &settings, &[]).await;
    let b = start_replica(
        &redis.url(),
        &settings,
        &[("SWITCHBOARD_STORE__TEST_CLOCK_OFFSET_MS", "10000")],
    )
    .await;
    assert!(b.log().contains("TEST ONLY"), "{}", b.log());
    let mut gateway = b.gateway().await;

    // Everything through the fast replica.
    let mut alice = b.agent("alice", &[("billing", 3)]).await;
    let beats = Heartbeats::start(b.agent_client("alice").await, Duration::from_millis(100));
    beats.wait_beats(2, LONG_WAIT).await;
    let lease = i64::try_from(
        beats
            .lease_expires_at_ms
            .load(std::sync::atomic::Ordering::SeqCst),
    )
    .unwrap();
    let skew = lease - (wall_clock_ms() + settings.lease_ms);
    assert!(
        skew.abs() < 1_000,
        "the lease is set on Redis's clock, not the replica's: off by {skew} ms"
    );

    gateway
        .request_agent(handoff("conv-1", "billing", 3))
        .await
        .unwrap();
    let offer = first_offer(&mut alice).await;
    let left = i64::try_from(offer.deadline_ms).unwrap() - wall_clock_ms();
    assert!(
        left > 500 && left <= settings.offer_timeout_ms + 500,
        "the offer deadline is {left} ms away, not about {} ms",
        settings.offer_timeout_ms
    );
    // Half the offer timeout later the offer still stands: a sweeper on the
    // fast replica did not see it 10 s overdue.
    let now = Instant::now();
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(settings.offer_timeout_ms / 2).unwrap(),
    ))
    .await;
    assert!(
        now.elapsed() < Duration::from_millis(u64::try_from(settings.offer_timeout_ms).unwrap())
    );
    let accepted = alice.accept(&offer).await.unwrap();
    assert_eq!(accepted.agent_id, "alice");

    // Three leases of heartbeats through the fast replica: alice stays
    // online with her conversation; nothing was revoked or requeued.
    let since = Instant::now();
    let lease_ms = Duration::from_millis(u64::try_from(settings.lease_ms).unwrap());
    while since.elapsed() < 3 * lease_ms {
        beats.wait_beats(1, LONG_WAIT).await;
    }
    let view = get_conversation(&mut gateway, "conv-1").await.unwrap();
    assert!(is_assigned(&view), "{view:?}");
    assert_eq!(view.agent_id, "alice");
    let events = pool_events(&redis).await;
    assert_eq!(count_events(&events, "conv-1", "requeued"), 0);
    assert_eq!(count_events(&events, "conv-1", "offer_revoked"), 0);
    for event in &events {
        let off = event.at.as_millis() - wall_clock_ms();
        assert!(
            off < 1_000,
            "an event stamped {off} ms in the future: {event:?}"
        );
    }
}
