//! Group commit (`RedisOptions::batch_calls`): calls made while the
//! store's previous call is in flight go to Redis together, one FCALL per
//! pool, and each is answered exactly as it would have been alone.
//!
//! The witness is a second store on a second `redis-server` that runs the
//! same calls one by one without batching, both with the clock pinned to
//! the same instant: every answer (value, refusal and the events it
//! committed) must be the same, and the batching store must have sent
//! them in one FCALL (`INFO commandstats`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::{BoxFuture, join_all};
use switchboard_core::model::{GoOnline, RosterEntry};
use switchboard_core::{AgentId, DispatchSettings, PoolId, Timestamp};
use switchboard_store::Store;
use switchboard_store::conformance::{self, agent, cid, handoff, offer, pool};
use switchboard_store_redis::{RedisOptions, RedisStore};
use switchboard_testkit::RedisServer;

const START: i64 = 1_800_000_000_000;

fn entry(id: &str) -> RosterEntry {
    RosterEntry {
        max_capacity: 1,
        ..conformance::entry(id)
    }
}

async fn store(server: &RedisServer, batch_calls: bool) -> RedisStore {
    let options = RedisOptions {
        batch_calls,
        ..RedisOptions::default()
    };
    let store = RedisStore::connect_with(&server.url(), DispatchSettings::default(), options)
        .await
        .expect("the store connects");
    store.pin_clock(Timestamp::from_millis(START));
    store
}

async fn fcalls(server: &RedisServer) -> u64 {
    server
        .command_calls()
        .await
        .get("fcall")
        .copied()
        .unwrap_or(0)
}

/// One store call, its answer rendered for comparison (value or refusal,
/// with the events it committed).
type Call = Box<dyn for<'a> Fn(&'a RedisStore, &'a PoolId) -> BoxFuture<'a, String> + Send + Sync>;

fn call<F>(f: F) -> Call
where
    F: for<'a> Fn(&'a RedisStore, &'a PoolId) -> BoxFuture<'a, String> + Send + Sync + 'static,
{
    Box::new(f)
}

/// A call by agent `who` (known only once the test has run that far).
fn by(
    who: &str,
    f: for<'a> fn(&'a RedisStore, &'a PoolId, AgentId) -> BoxFuture<'a, String>,
) -> Call {
    let who = agent(who);
    call(move |s, p| f(s, p, who.clone()))
}

/// Agent `id` (capacity 1) online in `p` with its stream attached.
async fn online(s: &RedisStore, p: &PoolId, id: &str) {
    s.upsert_roster(p, entry(id)).await.unwrap();
    s.go_online(p, &agent(id), GoOnline::default(), false)
        .await
        .unwrap();
    s.attach_stream(p, &agent(id)).await.unwrap();
}

/// Runs `calls` one by one on `alone` and all at once on `batched`; every
/// answer must match, and `batched` must have used one FCALL for them.
async fn same_answers(
    calls: &[Call],
    alone: (&RedisStore, &RedisServer),
    batched: (&RedisStore, &RedisServer),
) -> Vec<String> {
    let p = pool("p");
    let mut expected = Vec::new();
    for call in calls {
        expected.push(call(alone.0, &p).await);
    }
    let before = fcalls(batched.1).await;
    let answers = join_all(calls.iter().map(|call| call(batched.0, &p))).await;
    let sent = fcalls(batched.1).await - before;
    for (i, (got, want)) in answers.iter().zip(&expected).enumerate() {
        assert_eq!(
            got, want,
            "call {i}: batched answer differs from the answer alone"
        );
    }
    assert_eq!(
        sent,
        1,
        "{} calls made together went to redis in {sent} FCALLs",
        calls.len()
    );
    expected
}

#[tokio::test]
async fn a_batch_answers_every_call_as_if_it_ran_alone() {
    let server_alone = RedisServer::start().await;
    let server_batched = RedisServer::start().await;
    let alone = store(&server_alone, false).await;
    let batched = store(&server_batched, true).await;
    let p = pool("p");
    for s in [&alone, &batched] {
        for id in ["a1", "a2", "a3"] {
            online(s, &p, id).await;
        }
    }

    // Hand-offs (three find an agent, the fourth queues), heartbeats, one
    // refused (an agent who never went online), a repeated request and a
    // query of a conversation a call before it created.
    let first: Vec<Call> = vec![
        call(|s, p| Box::pin(async move { format!("{:?}", s.request(p, handoff("c1")).await) })),
        call(|s, p| {
            Box::pin(async move { format!("{:?}", s.heartbeat(p, &agent("a1"), None).await) })
        }),
        call(|s, p| Box::pin(async move { format!("{:?}", s.request(p, handoff("c2")).await) })),
        call(|s, p| {
            Box::pin(async move { format!("{:?}", s.heartbeat(p, &agent("ghost"), None).await) })
        }),
        call(|s, p| Box::pin(async move { format!("{:?}", s.request(p, handoff("c3")).await) })),
        call(|s, p| Box::pin(async move { format!("{:?}", s.request(p, handoff("c4")).await) })),
        call(|s, p| Box::pin(async move { format!("{:?}", s.request(p, handoff("c1")).await) })),
        call(|s, p| Box::pin(async move { format!("{:?}", s.conversation(p, &cid("c4")).await) })),
    ];
    let answers = same_answers(&first, (&alone, &server_alone), (&batched, &server_batched)).await;
    assert!(answers[3].contains("offline"), "{}", answers[3]);
    assert!(answers[7].contains("Queued"), "{}", answers[7]);

    // Who holds which offer (the same in both stores: the answers matched).
    let mut holders = Vec::new();
    for id in ["c1", "c2", "c3"] {
        let c = alone.conversation(&p, &cid(id)).await.unwrap();
        holders.push(c.agent_id.expect("offered").to_string());
    }
    let [h1, h2, h3] = <[String; 3]>::try_from(holders).unwrap();

    // Accept, decline (the declined conversation goes to no one: every
    // other agent is busy), accept with the wrong agent (refused),
    // complete (the freed agent takes the queued c4 in the same batch),
    // and the queued conversation's state after it.
    let second: Vec<Call> = vec![
        by(&h1, |s, p, a| {
            Box::pin(async move { format!("{:?}", s.accept(p, &a, &offer("c1", 1)).await) })
        }),
        by(&h2, |s, p, a| {
            Box::pin(
                async move { format!("{:?}", s.decline(p, &a, &offer("c2", 1), "busy").await) },
            )
        }),
        by(&h1, |s, p, a| {
            Box::pin(async move { format!("{:?}", s.accept(p, &a, &offer("c3", 1)).await) })
        }),
        by(&h3, |s, p, a| {
            Box::pin(async move { format!("{:?}", s.accept(p, &a, &offer("c3", 1)).await) })
        }),
        by(&h1, |s, p, a| {
            Box::pin(async move { format!("{:?}", s.complete(p, &a, &cid("c1"), "done").await) })
        }),
        call(|s, p| Box::pin(async move { format!("{:?}", s.conversation(p, &cid("c4")).await) })),
    ];
    let answers = same_answers(
        &second,
        (&alone, &server_alone),
        (&batched, &server_batched),
    )
    .await;
    assert!(answers[2].contains("PermissionDenied"), "{}", answers[2]);
    assert!(answers[5].contains("Offered"), "{}", answers[5]);
}

/// Calls to two pools made together: one round trip, one FCALL per pool
/// (a pipeline), each pool's calls answered from its own state.
#[tokio::test]
async fn calls_to_several_pools_share_the_round_trip_one_fcall_each() {
    let server = RedisServer::start().await;
    let store = store(&server, true).await;
    let (p, q) = (pool("p"), pool("q"));
    online(&store, &p, "a1").await;
    online(&store, &q, "b1").await;
    let before = fcalls(&server).await;
    let b1 = agent("b1");
    let (in_p, in_q, p_again, q_beat) = tokio::join!(
        store.request(&p, handoff("c1")),
        store.request(&q, handoff("c1")),
        store.request(&p, handoff("c2")),
        store.heartbeat(&q, &b1, None),
    );
    assert_eq!(fcalls(&server).await - before, 2, "one FCALL per pool");
    let offered_to = |c: &switchboard_core::model::Conversation| c.agent_id.clone();
    assert_eq!(offered_to(&in_p.unwrap().value.0), Some(agent("a1")));
    assert_eq!(offered_to(&in_q.unwrap().value.0), Some(agent("b1")));
    // p's only agent holds c1's offer: c2 queues.
    assert_eq!(offered_to(&p_again.unwrap().value.0), None);
    assert_eq!(q_beat.unwrap().value.agent_id, agent("b1"));
}

/// A Redis that lost the library (restarted without persistence, FUNCTION
/// FLUSH) gets it back on the next batch, and every call of it runs.
#[tokio::test]
async fn a_batch_reloads_a_lost_library_and_runs_every_call() {
    let server = RedisServer::start().await;
    let store = store(&server, true).await;
    let p = pool("p");
    for id in ["a1", "a2"] {
        store.upsert_roster(&p, entry(id)).await.unwrap();
    }
    let mut connection = server.connection().await;
    let _: String = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
    let (a1, a2) = (agent("a1"), agent("a2"));
    let (one, two) = tokio::join!(
        store.go_online(&p, &a1, GoOnline::default(), false),
        store.go_online(&p, &a2, GoOnline::default(), false),
    );
    one.expect("a1 goes online after the reload");
    two.expect("a2 goes online after the reload");
    assert_eq!(store.agents(&p).await.unwrap().len(), 2);
}

/// A batch naming an unknown command, or claiming more arguments than it
/// carries, is refused whole with a message that says so: nothing in it
/// runs. (The store never sends one; this is the library's own guard.)
#[tokio::test]
async fn a_malformed_batch_is_refused_whole() {
    let server = RedisServer::start().await;
    let store = store(&server, false).await;
    let p = pool("p");
    store.upsert_roster(&p, entry("a1")).await.unwrap();
    let mut connection = server.connection().await;
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    let function = format!("{libraries:?}")
        .split('"')
        .find(|word| word.starts_with("sb_dispatch_"))
        .expect("the dispatch function is loaded")
        .to_owned();
    let batch = |commands: &[&str]| {
        let mut call = redis::cmd("FCALL");
        call.arg(&function)
            .arg(1)
            .arg("sb:{p}:")
            .arg("batch")
            .arg("p")
            .arg(0)
            .arg(0);
        // The settings: offer timeout, delivery grace, lease, max wait,
        // misses before away, retention, wrap-up, outage threshold, stream
        // cap, sweep limit, row format, events in replies; then not paused.
        call.arg(&[
            "20000", "5000", "30000", "600000", "3", "3600000", "0", "1000", "100000", "1000",
            "msgpack", "1", "0",
        ]);
        call.arg(commands);
        call
    };
    for (commands, says) in [
        (
            &["1", "no_such_command", "0"][..],
            "switchboard command no_such_command",
        ),
        (
            &["2", "agents", "0", "go_online", "9", "a1"][..],
            "switchboard batch at command 2",
        ),
        (&["1", "agents", "5"][..], "switchboard batch at command 1"),
    ] {
        let refused = batch(commands)
            .query_async::<redis::Value>(&mut connection)
            .await
            .expect_err("a malformed batch is refused");
        assert!(refused.to_string().contains(says), "{refused}");
    }
    assert!(
        store.agents(&p).await.unwrap().is_empty(),
        "nothing in a refused batch ran"
    );
}
