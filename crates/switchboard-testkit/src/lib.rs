//! Test support shared by the suites of several crates. Test code: failures
//! panic with a message that says what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod redis;

pub use crate::redis::RedisServer;
