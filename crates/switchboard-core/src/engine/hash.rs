//! The hasher of the engine's hash maps: foldhash, seeded per map from the
//! standard library's randomly keyed hasher.
//!
//! # Design
//!
//! With the standard library's SipHash-1-3, hashing ids and requirement
//! keys was a quarter of the engine's instructions in the core benchmark.
//! foldhash (the default of the `hashbrown` crate the standard map is built
//! on) takes a fraction of that for short strings: a request among 10,000
//! agents went from 20.1k to 15.5k instructions, a free agent with 10,000
//! conversations waiting from 89.8k to 78.1k. It is not a keyed pseudo-random
//! function: its authors call it "minimally DoS-resistant" (inputs that
//! collide under every seed cannot be built; an attacker who learns a
//! map's seeds can). Its own seeds come from address-space layout and the
//! clock; ours come from the operating system's randomness instead (the
//! standard library keys its SipHash from it), so the ids clients choose
//! cannot be aimed at collisions without first recovering a per-map seed
//! through timing. Iteration order is as arbitrary as before: nothing
//! observable depends on it (everything listed is sorted).

use foldhash::SharedSeed;
use foldhash::fast::{FoldHasher, SeedableRandomState};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// A hash map of the engine.
pub(super) type Map<K, V> = HashMap<K, V, Seeded>;
/// A hash set of the engine.
pub(super) type Set<K> = HashSet<K, Seeded>;

/// foldhash with a per-map seed, and a per-process shared seed, drawn from
/// the operating system's randomness (through the standard library's
/// randomly keyed `RandomState`).
#[derive(Clone, Debug)]
pub(super) struct Seeded(SeedableRandomState);

impl Default for Seeded {
    fn default() -> Self {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        // Each `RandomState::new()` has its own keys (random per thread,
        // then stepped), so every map gets a seed of its own.
        let random = RandomState::new();
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random.hash_one(0_u64)));
        Seeded(SeedableRandomState::with_seed(
            random.hash_one(1_u64),
            shared,
        ))
    }
}

impl BuildHasher for Seeded {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> FoldHasher<'static> {
        self.0.build_hasher()
    }
}
