//! The operations subcommands over `AdminService`: presence, queues,
//! shifts, the roster, and forcing an agent offline.
//!
//! Each command makes one call and renders the answer as a table or as
//! JSON. The JSON keeps the protocol's field names and raw numbers
//! (milliseconds, epoch timestamps) so scripts need no parsing of the
//! human formatting; only enums become their short names.

use anyhow::{Context, bail};
use serde_json::json;
use switchboard_proto::v1::admin_service_client::AdminServiceClient;
use switchboard_proto::v1::{
    AgentPresence, AgentShift, ForceOfflineRequest, ListAgentsRequest, ListRosterRequest,
    QueueStatsRequest, RosterEntry, ShiftStatsRequest, Skill, UpsertRosterEntryRequest,
};

use crate::connection::{AuthenticatedChannel, BearerToken, Server, unix_now_millis};
use crate::display::{
    OutputFormat, age_text, agent_status_name, align_numbers_right, duration_text, list_text,
    new_table, print_json, print_output, skills_json, skills_text, timestamp_text, yes_no,
};

/// An admin session: one server, one admin token, one output format.
pub struct AdminSession {
    pub(crate) server: Server,
    pub(crate) client: AdminServiceClient<AuthenticatedChannel>,
    /// "pool `default`", or "the token's pool" when the operator gave a
    /// token: the token names the pool, and `--pool` does not apply then.
    pool_description: String,
    pub(crate) output: OutputFormat,
}

impl AdminSession {
    pub fn new(
        server: Server,
        token: &BearerToken,
        pool_description: &str,
        output: OutputFormat,
    ) -> Self {
        let client = server.admin_client(token);
        AdminSession {
            server,
            client,
            pool_description: pool_description.to_owned(),
            output,
        }
    }

    /// `sbctl agents`: who is online, in what state, with what load.
    pub async fn list_agents(&mut self) -> anyhow::Result<()> {
        let response = self
            .server
            .call("list agents", self.client.list_agents(ListAgentsRequest {}))
            .await?;
        let mut agents = response.agents;
        agents.sort_by(|left, right| left.agent_id.cmp(&right.agent_id));
        match self.output {
            OutputFormat::Json => print_json(
                &json!({ "agents": agents.iter().map(agent_presence_json).collect::<Vec<_>>() }),
            ),
            OutputFormat::Table if agents.is_empty() => {
                print_output(&format!("no agents online in {}", self.pool_description))
            }
            OutputFormat::Table => print_output(&agents_table(&agents, unix_now_millis())),
        }
    }

    /// `sbctl queue`: queue depth and longest wait per skill, plus totals.
    pub async fn queue_stats(&mut self) -> anyhow::Result<()> {
        let stats = self
            .server
            .call("queue stats", self.client.queue_stats(QueueStatsRequest {}))
            .await?;
        if self.output == OutputFormat::Json {
            let queues: Vec<_> = stats
                .queues
                .iter()
                .map(|queue| json!({ "skill": queue.skill, "depth": queue.depth, "longest_wait_ms": queue.longest_wait_ms }))
                .collect();
            return print_json(&json!({
                "queues": queues,
                "total_queued": stats.total_queued,
                "total_offered": stats.total_offered,
                "total_assigned": stats.total_assigned,
                "agents_online": stats.agents_online,
                "agents_available": stats.agents_available,
            }));
        }
        let mut queues = stats.queues.clone();
        // Deepest queue first: that is where an operator looks.
        queues.sort_by(|left, right| {
            right
                .depth
                .cmp(&left.depth)
                .then_with(|| left.skill.cmp(&right.skill))
        });
        let mut lines = Vec::new();
        if queues.is_empty() {
            lines.push(format!(
                "no conversations queued in {}",
                self.pool_description
            ));
        } else {
            let mut table = new_table(&["skill", "queued", "longest wait"]);
            for queue in &queues {
                table.add_row(vec![
                    queue.skill.clone(),
                    queue.depth.to_string(),
                    duration_text(queue.longest_wait_ms),
                ]);
            }
            align_numbers_right(&mut table, &[1, 2]);
            lines.push(table.to_string());
        }
        lines.push(format!(
            "conversations: {} queued, {} offered, {} assigned; agents: {} online, {} available",
            stats.total_queued,
            stats.total_offered,
            stats.total_assigned,
            stats.agents_online,
            stats.agents_available
        ));
        print_output(&lines.join("\n"))
    }

    /// `sbctl shifts`: per-agent shift statistics and the total.
    pub async fn shift_stats(&mut self) -> anyhow::Result<()> {
        let stats = self
            .server
            .call("shift stats", self.client.shift_stats(ShiftStatsRequest {}))
            .await?;
        let mut shifts = stats.agents;
        shifts.sort_by(|left, right| left.agent_id.cmp(&right.agent_id));
        // A server that leaves `total` out is answered with zeros rather
        // than an error: the per-agent rows are still worth showing.
        let total = stats.total.unwrap_or_default();
        if self.output == OutputFormat::Json {
            return print_json(&json!({
                "agents": shifts.iter().map(shift_json).collect::<Vec<_>>(),
                "total": shift_json(&total),
            }));
        }
        if shifts.is_empty() {
            return print_output(&format!("no shifts recorded in {}", self.pool_description));
        }
        let mut table = new_table(&[
            "agent",
            "online now",
            "online time",
            "offers",
            "accepted",
            "declined",
            "missed",
            "completed",
            "avg handle time",
            "transfers",
            "CSAT (n)",
        ]);
        for shift in &shifts {
            table.add_row(shift_row(&shift.agent_id, yes_no(shift.online), shift));
        }
        // The total's `online` flag means nothing; the count of online
        // agents is the useful figure in that cell.
        let online_count = shifts
            .iter()
            .filter(|shift| shift.online)
            .count()
            .to_string();
        table.add_row(shift_row("total", &online_count, &total));
        align_numbers_right(&mut table, &[2, 3, 4, 5, 6, 7, 8]);
        print_output(&table.to_string())
    }

    /// `sbctl roster list`.
    pub async fn list_roster(&mut self) -> anyhow::Result<()> {
        let response = self
            .server
            .call("list roster", self.client.list_roster(ListRosterRequest {}))
            .await?;
        let mut entries = response.entries;
        entries.sort_by(|left, right| left.agent_id.cmp(&right.agent_id));
        match self.output {
            OutputFormat::Json => print_json(
                &json!({ "entries": entries.iter().map(roster_entry_json).collect::<Vec<_>>() }),
            ),
            OutputFormat::Table if entries.is_empty() => {
                print_output(&format!("no roster entries in {}", self.pool_description))
            }
            OutputFormat::Table => print_output(&roster_table(&entries)),
        }
    }

    /// `sbctl roster upsert`: creates or replaces one roster entry.
    pub async fn upsert_roster_entry(&mut self, entry: RosterEntry) -> anyhow::Result<()> {
        let agent_id = entry.agent_id.clone();
        let request = UpsertRosterEntryRequest { entry: Some(entry) };
        let response = self
            .server
            .call(
                "upsert roster entry",
                self.client.upsert_roster_entry(request),
            )
            .await?;
        let stored = response.entry.with_context(|| {
            format!("the server stored roster entry `{agent_id}` but did not return it")
        })?;
        match self.output {
            OutputFormat::Json => print_json(
                &json!({ "created": response.created, "entry": roster_entry_json(&stored) }),
            ),
            OutputFormat::Table => {
                let verb = if response.created {
                    "created"
                } else {
                    "updated"
                };
                print_output(&format!(
                    "{verb} roster entry `{}`\n{}",
                    stored.agent_id,
                    roster_table(std::slice::from_ref(&stored))
                ))
            }
        }
    }

    /// `sbctl force-offline`: ends an agent's session and voids its tokens.
    pub async fn force_offline(&mut self, agent_id: &str, reason: &str) -> anyhow::Result<()> {
        let request = ForceOfflineRequest {
            agent_id: agent_id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self
            .server
            .call("force offline", self.client.force_offline(request))
            .await?;
        match self.output {
            OutputFormat::Json => print_json(&json!({
                "agent_id": agent_id,
                "requeued_conversation_ids": response.requeued_conversation_ids,
            })),
            OutputFormat::Table if response.requeued_conversation_ids.is_empty() => print_output(
                &format!("forced `{agent_id}` offline; no conversations were requeued"),
            ),
            OutputFormat::Table => print_output(&format!(
                "forced `{agent_id}` offline; requeued {} conversation(s): {}",
                response.requeued_conversation_ids.len(),
                response.requeued_conversation_ids.join(", ")
            )),
        }
    }
}

fn agents_table(agents: &[AgentPresence], now_millis: u64) -> String {
    let mut table = new_table(&[
        "agent",
        "status",
        "away reason",
        "skills",
        "languages",
        "active/capacity",
        "stream",
        "pending offer",
        "online since",
        "last heartbeat",
    ]);
    for agent in agents {
        table.add_row(vec![
            agent.agent_id.clone(),
            agent_status_name(agent.status),
            if agent.away_reason.is_empty() {
                "-".to_owned()
            } else {
                agent.away_reason.clone()
            },
            skills_text(&agent.skills),
            list_text(&agent.languages),
            format!("{}/{}", agent.active_conversations, agent.capacity),
            if agent.stream_attached {
                "attached".to_owned()
            } else {
                "detached".to_owned()
            },
            // Explains a "busy" agent below capacity: an offer reserves it.
            if agent.pending_offer_conversation_id.is_empty() {
                "-".to_owned()
            } else {
                agent.pending_offer_conversation_id.clone()
            },
            timestamp_text(agent.online_since_ms),
            age_text(agent.last_heartbeat_ms, now_millis),
        ]);
    }
    align_numbers_right(&mut table, &[5]);
    table.to_string()
}

fn agent_presence_json(agent: &AgentPresence) -> serde_json::Value {
    json!({
        "agent_id": agent.agent_id,
        "status": agent_status_name(agent.status),
        "away_reason": agent.away_reason,
        "skills": skills_json(&agent.skills),
        "languages": agent.languages,
        "capacity": agent.capacity,
        "active_conversations": agent.active_conversations,
        "stream_attached": agent.stream_attached,
        "online_since_ms": agent.online_since_ms,
        "last_heartbeat_ms": agent.last_heartbeat_ms,
        "idle_since_ms": agent.idle_since_ms,
        "pending_offer_conversation_id": agent.pending_offer_conversation_id,
    })
}

fn shift_row(label: &str, online_cell: &str, shift: &AgentShift) -> Vec<String> {
    vec![
        label.to_owned(),
        online_cell.to_owned(),
        duration_text(shift.online_ms),
        shift.offers.to_string(),
        shift.accepted.to_string(),
        shift.declined.to_string(),
        shift.missed.to_string(),
        shift.completed.to_string(),
        average_handle_time(shift).map_or_else(|| "-".to_owned(), duration_text),
        shift.transfers.to_string(),
        csat_text(shift.csat_average, shift.csat_count),
    ]
}

/// `4.50 (2)`, or `-` before the first report.
fn csat_text(average: f64, count: u32) -> String {
    if count == 0 {
        "-".to_owned()
    } else {
        format!("{average:.2} ({count})")
    }
}

/// Total handle time over completed conversations; none before the first.
fn average_handle_time(shift: &AgentShift) -> Option<u64> {
    (shift.completed > 0).then(|| shift.handle_ms_total / u64::from(shift.completed))
}

fn shift_json(shift: &AgentShift) -> serde_json::Value {
    json!({
        "agent_id": shift.agent_id,
        "online": shift.online,
        "online_ms": shift.online_ms,
        "offers": shift.offers,
        "accepted": shift.accepted,
        "declined": shift.declined,
        "missed": shift.missed,
        "completed": shift.completed,
        "handle_ms_total": shift.handle_ms_total,
        "average_handle_ms": average_handle_time(shift),
        "transfers": shift.transfers,
        "csat_count": shift.csat_count,
        "csat_average": (shift.csat_count > 0).then_some(shift.csat_average),
        "lifetime_csat_count": shift.lifetime_csat_count,
        "lifetime_csat_average": (shift.lifetime_csat_count > 0).then_some(shift.lifetime_csat_average),
    })
}

fn roster_table(entries: &[RosterEntry]) -> String {
    let mut table = new_table(&[
        "agent",
        "name",
        "skills",
        "languages",
        "max capacity",
        "regions",
        "attributes",
    ]);
    for entry in entries {
        table.add_row(vec![
            entry.agent_id.clone(),
            if entry.display_name.is_empty() {
                "-".to_owned()
            } else {
                entry.display_name.clone()
            },
            skills_text(&entry.skills),
            list_text(&entry.languages),
            entry.max_capacity.to_string(),
            list_text(&entry.allowed_regions),
            list_text(&entry.attributes),
        ]);
    }
    align_numbers_right(&mut table, &[4]);
    table.to_string()
}

fn roster_entry_json(entry: &RosterEntry) -> serde_json::Value {
    json!({
        "agent_id": entry.agent_id,
        "display_name": entry.display_name,
        "skills": skills_json(&entry.skills),
        "languages": entry.languages,
        "max_capacity": entry.max_capacity,
        "allowed_regions": entry.allowed_regions,
        "attributes": entry.attributes,
    })
}

/// Parses `--skill billing:4`. Only the shape is checked here (a name and
/// a level 1..5); the server validates the name's characters, so the two
/// cannot disagree about what a valid name is.
pub fn parse_skill(text: &str) -> anyhow::Result<Skill> {
    let Some((name, level_text)) = text.rsplit_once(':') else {
        bail!("skill `{text}` must be NAME:LEVEL, e.g. billing:4");
    };
    if name.is_empty() {
        bail!("skill `{text}` has no name before the colon");
    }
    let level: u32 = level_text.parse().with_context(|| {
        format!("skill `{text}` has level `{level_text}`, which is not a whole number")
    })?;
    if !(1..=5).contains(&level) {
        bail!("skill `{text}` has level {level}, but levels run from 1 (novice) to 5 (expert)");
    }
    Ok(Skill {
        name: name.to_owned(),
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skills_parse_with_a_level_from_one_to_five() {
        assert_eq!(
            parse_skill("billing:4").unwrap(),
            Skill {
                name: "billing".into(),
                level: 4
            }
        );
        assert!(parse_skill("billing").is_err());
        assert!(parse_skill(":3").is_err());
        assert!(parse_skill("billing:0").is_err());
        assert!(parse_skill("billing:6").is_err());
        assert!(parse_skill("billing:high").is_err());
    }

    #[test]
    fn average_handle_time_needs_a_completed_conversation() {
        let mut shift = AgentShift {
            completed: 0,
            handle_ms_total: 0,
            ..Default::default()
        };
        assert_eq!(average_handle_time(&shift), None);
        shift.completed = 4;
        shift.handle_ms_total = 2_000;
        assert_eq!(average_handle_time(&shift), Some(500));
    }
}
