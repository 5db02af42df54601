//! The conformance suite against the in-memory store on a manual clock.

use async_trait::async_trait;
use std::sync::Arc;
use switchboard_core::DispatchSettings;
use switchboard_store::conformance::Harness;
use switchboard_store::{ManualClock, MemoryStore, Store};

struct MemoryHarness {
    store: Arc<MemoryStore>,
    clock: ManualClock,
}

#[async_trait]
impl Harness for MemoryHarness {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn replica(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn advance(&self, ms: i64) {
        self.clock.advance(ms);
    }
}

async fn memory_harness(settings: DispatchSettings) -> MemoryHarness {
    let clock = ManualClock::new(1_700_000_000_000);
    MemoryHarness {
        store: Arc::new(MemoryStore::new(settings, Arc::new(clock.clone()))),
        clock,
    }
}

switchboard_store::conformance_suite!(memory_harness);
