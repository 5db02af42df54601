//! The Redis key layout: every key of a pool carries the pool as its hash
//! tag, so a script touches one slot and Redis Cluster can spread pools.
//!
//! # Layout
//!
//! `P` below is the pool prefix `sb:{<pool>}:`. Pool, agent and conversation
//! ids are `[A-Za-z0-9_.:@-]`, so the first `{…}` in a key is always the pool.
//!
//! | key | type | what |
//! |---|---|---|
//! | `sb:pools` | set | every pool ever written to; the sweeper and the event feed walk it. Outside any pool slot, so it is written by its own command (once per pool per process), never from a script |
//! | `P roster` | hash | agent id → roster entry (JSON, the serde shape of `RosterEntry`) |
//! | `P agents` | set | every agent that has been online (for shift statistics) |
//! | `P online` | set | agents with a session |
//! | `P agent:<id>` | string | the agent row (JSON): `session` (skills, languages, capacity, stream, active conversations, pending offer, lease, idle since, misses, indexed score) and `shift` counters |
//! | `P conv:<id>` | string | the conversation row (JSON): the hand-off as the exact serde JSON the gateway's request produced, the routing fields, state, offers, excluded agents, sequence number |
//! | `P avail:<language>:<skill>` | zset | offerable agents speaking `language` with `skill` (`*` = any), scored by idle-since: longest idle first |
//! | `P groups` | set | ids of the non-empty queue groups |
//! | `P glang:<primary subtag>` | set | ids of the non-empty groups whose language starts with that subtag (what a free agent looks at) |
//! | `P queue:<group>` | zset | waiting conversations of one group (identical language, skills, region); every score 0 and the member `9-priority|queued since|arrival|id` in fixed width, so ZRANGE order is priority, then waiting time, then arrival, and ZRANK is the queue position |
//! | `P qage:<group>` | zset | the same conversations scored by queued-since (longest wait per group) |
//! | `P deadlines` | zset | every pending deadline, scored by when it is due; members `1|conv|attempt` (undelivered offer), `2|conv|attempt` (offer timeout), `3|agent|conv|attempt` (stream-detach grace), `4|agent` (lease), `5|conv` (maximum wait), `6|conv` (retention) |
//! | `P events` | stream | every event of the pool, field `event` = serde JSON of `switchboard_core::Event`, capped with `MAXLEN ~` |
//! | `P arrivals` | string | counter: arrival order in the queue |
//! | `P stream_ids` | string | counter: agent event stream ids |
//! | `P first_offers` | list | times of the last 64 first offers (expected wait) |
//!
//! A group id is `language|skill:level,…|=region` (empty after the last `|`
//! when the conversation names no region).

use switchboard_core::PoolId;

/// The set of known pools.
pub const POOLS: &str = "sb:pools";

/// The prefix of every key of `pool`, with the pool as hash tag. Scripts
/// get it as `KEYS[1]` (which routes them to the pool's slot) and build the
/// other keys from it.
pub fn prefix(pool: &PoolId) -> String {
    format!("sb:{{{pool}}}:")
}

/// The roster hash of `pool`.
pub fn roster(pool: &PoolId) -> String {
    format!("{}roster", prefix(pool))
}

/// The event stream of the pool named `pool` (as listed in [`POOLS`]).
pub fn events(pool: &str) -> String {
    format!("sb:{{{pool}}}:events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_pool_as_hash_tag() {
        let pool = PoolId::parse("pool", "eu-1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prefix(&pool), "sb:{eu-1}:");
        assert_eq!(roster(&pool), "sb:{eu-1}:roster");
        assert_eq!(events(pool.as_str()), "sb:{eu-1}:events");
    }
}
