//! The conformance suite against the Redis store, each test on its own
//! `redis-server`. Time moves through the store's test-only clock offset
//! (added to Redis's TIME inside the scripts), so nothing sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::DispatchSettings;
use switchboard_store::Store;
use switchboard_store::conformance::Harness;
use switchboard_store_redis::{RedisOptions, RedisStore};
use switchboard_testkit::RedisServer;

struct RedisHarness {
    // Dropped first: the store's feed task stops before the server dies.
    store: Arc<RedisStore>,
    /// A second replica on the same Redis.
    replica: Arc<RedisStore>,
    _server: RedisServer,
}

#[async_trait]
impl Harness for RedisHarness {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn replica(&self) -> Arc<dyn Store> {
        self.replica.clone()
    }

    async fn advance(&self, ms: i64) {
        self.store.advance_clock(ms);
        self.replica.advance_clock(ms);
    }
}

async fn redis_harness(settings: DispatchSettings) -> RedisHarness {
    let server = RedisServer::start().await;
    // No sweeper runs between the calls of a check, so a loaded machine
    // pausing the test for a second must not read as a Redis outage (which
    // extends leases; tests/redis_outage.rs covers that).
    let options = RedisOptions {
        outage_threshold: Duration::from_secs(60),
        ..RedisOptions::default()
    };
    let store = RedisStore::connect_with(&server.url(), settings.clone(), options.clone())
        .await
        .expect("the store connects to its redis-server");
    let replica = RedisStore::connect_with(&server.url(), settings, options)
        .await
        .expect("the replica connects to its redis-server");
    RedisHarness {
        store: Arc::new(store),
        replica: Arc::new(replica),
        _server: server,
    }
}

switchboard_store::conformance_suite!(redis_harness);
