//! The Redis key layout: every key of a pool carries the pool as its hash
//! tag, so a script touches one slot and Redis Cluster can spread pools.
//! This is the reference for operators (docs/ links here).
//!
//! # Layout
//!
//! `P` below is the pool prefix `sb:{<pool>}:`. Pool, agent and conversation
//! ids are `[A-Za-z0-9_.:@-]`, so the first `{…}` in a key is always the pool.
//! Rows are MessagePack maps (JSON objects when written with
//! [`crate::RowFormat::Json`] or by a build before MessagePack rows: both are
//! read); times are Unix milliseconds of Redis's own clock (`TIME`).
//!
//! | key | type | what |
//! |---|---|---|
//! | `sb:pools` | set | every pool ever written to; the sweeper and the event feed walk it. Outside any pool slot, so it is written by its own command (once per pool per process), never from a script |
//! | `sb:config_version` | string | the dispatch config version in force for the deployment; written by the first replica (SET NX) or by `switchboard activate-config`; a replica running another version reports NOT_SERVING (see docs/redis.md). Outside any pool slot, never touched by a script |
//! | `sb:routing`, `sb:routing:changed`, `sb:replicas` | hash, channel, hash | the routing config in force for the deployment (file text, version, source, activation), the channel announcing a new one, and the routing version each live replica runs: see [`crate::routing_config`]. Outside any pool slot, never touched by a dispatch script |
//! | `P roster` | hash | agent id → roster entry (JSON, the serde shape of `RosterEntry`) |
//! | `P agents` | set | every agent that has been online (for shift statistics) |
//! | `P online` | set | agents with a session |
//! | `P agent:<id>` | string | the agent row: `session` (skills, languages, capacity, location, choice and away reason, `draining`, `wrap_up_until`, `reject_until` (a planned conversation's reject delay after a decline), `regions` (the resolved regions `Store::set_agent_regions` gave; absent until known), stream, active conversations, pending offer, lease, last heartbeat, idle since, misses, indexed score), `shift` counters (reset by each go-online), `quality` (CSAT reports and their sum over every shift; kept when the session ends, so it outlives go-offline/go-online; absent until the first report) and `last_offer_seq` (the pool's offer counter at the agent's last offer, for round robin; absent = never) |
//! | `P conv:<id>` | string | the conversation row: the hand-off as the exact serde JSON the gateway's request produced (a transfer to a queue rewrites only its `category`, `required_skills` and `language` values in place, every other byte kept), the routing fields, state, offers, excluded agents, transfers, CSAT score, sequence number, while queued its group and queue member, and for a planned conversation `routed`: the routing plan (decoded from the serde JSON of `RoutingPlan`; an overflow's nested plan inside), when its clock started, the step in force (from 0), its generation, its base priority in the queue and when its maximum wait is due (absent once a callback) |
//! | `P avail:<language>:<skill>` | zset | offerable agents (stream attached, available, not draining, not in wrap-up or a reject delay, no pending offer, spare capacity) speaking `language` with `skill` (`*` = any), scored by idle-since: longest idle first |
//! | `P family:<primary subtag>` | set | language tags that have had offerable agents, by primary subtag (`de` → `de`, `de-at`): where a planned requirement with a widened language looks agents up. Added to when an agent enters the index, never pruned (a tag whose sets are empty adds no candidate) |
//! | `P groups` | set | ids of the non-empty queue groups |
//! | `P glang:<primary subtag>` | set | ids of the non-empty groups whose language starts with that subtag (what a free agent looks at) |
//! | `P queue:<group>` | zset | waiting conversations of one group (identical requirements); every score 0 and the member `9-priority|queued since|arrival|id` in fixed width (priorities are 0..=9, one digit), so ZRANGE order is priority, then waiting time, then arrival, ZRANK is the queue position, and ZRANGEBYLEX from a digit reaches one priority level (aging compares the head of each) |
//! | `P qage:<group>` | zset | the same conversations scored by queued-since (longest wait per group) |
//! | `P deadlines` | zset | every pending deadline, scored by when it is due; members numbered in the engine's `Deadline` order, one character each: `1|conv|attempt` (undelivered offer), `2|conv|attempt` (offer timeout), `3|agent|conv|attempt` (stream-detach grace), `4|agent` (lease), `5|agent|until` (wrap-up end), `6|conv` (maximum wait; `6|conv|at` for a plan's, so a transfer's or an overflow's new one coexists with the old), `7|conv` (retention), `8|conv|generation|step` (a plan's relaxation step, both zero-padded), `9|conv|generation` (end of the preferred-agent window), `A|agent|until` (end of a reject delay). Entries may be stale; each is checked against the rows when it fires. `~` and a member: a deadline defused by a build before `deadlines_defused`, dropped when due without reading any row |
//! | `P deadlines_defused` | zset | deadlines that can no longer act (an offer's delivery and timeout once it was delivered or closed, a maximum wait once its conversation ended), moved out of `deadlines` at their time: the `sweep` command's next deadline counts them (as the engine keeps such entries until due), and drops the due ones in one ZREMRANGEBYSCORE; no sweep pops them one by one |
//! | `P events` | stream | every event of the pool, field `event` = serde JSON of `switchboard_core::Event`, capped with `MAXLEN ~` (`RedisOptions::stream_max_len`) |
//! | `P arrivals` | string | counter: arrival order in the queue |
//! | `P stream_ids` | string | counter: agent event stream ids |
//! | `P first_offers` | list | times of the pool's last 64 first offers (the expected wait's fallback rate) |
//! | `P grate:<group>` | list | times of the group's last 64 first offers (its own rate, used from 4 on) |
//! | `P rate_groups` | set | groups with a `grate:` list; at 10 000 they are all dropped and start over (as the engine bounds its map) |
//! | `P last_contact` | string | Redis time (ms) the pool was last reached by a command or a sweep: the outage rule below |
//! | `P offer_seq` | string | counter: every offer of the pool (round robin's order) |
//! | `P plan_generations` | string | counter: plan installations, so deadlines of a replaced plan are recognised as stale |
//! | `P delivery_paused` | string | Redis time (ms, the scripts' clock) until which no replica withdraws an offer of the pool as undelivered: set to now + one delivery grace by every command of a replica whose delivery checks are paused (`Store::pause_delivery_checks`), expiring 10 min after its last write |
//!
//! A group id is `language|skill:level,…|=region` (empty after the last `|`
//! when the conversation names no region). A planned conversation's group
//! is `language|skill:level,…|~{"w":…,"a":[…],"g":[…]|null,"l":…,"r":…,"c":…}`:
//! the requirements of the step in force (widened language, attributes,
//! regions), the plan's roster-regions rule and its aging rate and ceiling,
//! rendered in that fixed order so equal requirements share a group.
//!
//! # Leases after an outage
//!
//! Every command and sweep first compares Redis's `TIME` with
//! `P last_contact` and writes it. A gap longer than
//! `RedisOptions::outage_threshold` (default 1 s; every replica's sweeper
//! reaches every pool many times a second, so only Redis being unreachable
//! or every replica being down makes one) means agents could not heartbeat
//! either: before any deadline is acted on, every lease of the pool is
//! pushed to at least now + lease (the script reports it and the replica
//! logs a warning). So no lease expires until a full lease interval after
//! Redis is back; an agent who does not come back lapses then, as usual.
//! Offer deadlines are not extended: an offer that ran out during the
//! outage times out and requeues on the next sweep.
//!
//! # Durability
//!
//! Everything above is the state; nothing lives only in a replica. Run
//! Redis with AOF (`appendonly yes`, `appendfsync everysec`) and without
//! eviction (`maxmemory-policy noeviction`): an evicted row would be a lost
//! conversation. A Redis crash may lose about the last second of
//! acknowledged changes (everysec); every command is idempotent on its ids
//! (a repeated hand-off, accept, decline, complete or cancel returns the
//! first result), so a gateway that retries until a watch event confirms
//! loses nothing. The dispatch function library (`switchboard_<hash>`,
//! function `sb_dispatch_<hash>`) is kept by Redis like data (RDB/AOF); a
//! Redis that lost it answers "Function not found" and the store loads it
//! again (one extra round trip). Old versions' libraries stay loaded until
//! an operator runs `FUNCTION DELETE` (they are a few tens of KiB each and
//! never called). Conversations are
//! deleted `retention_ms` after they finish; the event stream is capped.

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
