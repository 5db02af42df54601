//! The demo's narration: one line per conversation event or agent remark,
//! stamped with the time since the demo started, or one JSON object per
//! line with `--json`.

use std::time::Instant;

use serde_json::json;
use switchboard_proto::v1::Conversation;

use crate::display::{OutputFormat, conversation_state_name, duration_text, print_output};

/// Shared by every demo task; each line is written whole under the stdout
/// lock, so lines from concurrent tasks never interleave.
#[derive(Debug)]
pub struct Reporter {
    started: Instant,
    output: OutputFormat,
    /// `demo-<run tag>-`: stripped from conversation ids to give the short
    /// labels (`c-1`) the narration uses.
    conversation_id_prefix: String,
}

impl Reporter {
    pub fn new(output: OutputFormat, conversation_id_prefix: String) -> Self {
        Reporter {
            started: Instant::now(),
            output,
            conversation_id_prefix,
        }
    }

    /// The short label of a demo conversation id (`demo-7f3a-c-1` → `c-1`);
    /// ids from elsewhere are shown whole.
    pub fn label<'id>(&self, conversation_id: &'id str) -> &'id str {
        conversation_id
            .strip_prefix(&self.conversation_id_prefix)
            .unwrap_or(conversation_id)
    }

    /// A conversation event as the gateway's watch delivered it.
    pub fn conversation_event(&self, kind: &str, seq: u64, conversation: &Conversation) {
        let label = self.label(&conversation.conversation_id);
        match self.output {
            OutputFormat::Table => {
                self.write_line(&describe_conversation_event(label, kind, conversation))
            }
            OutputFormat::Json => self.write_json(json!({
                "conversation": label,
                "conversation_id": conversation.conversation_id,
                "event": kind,
                "seq": seq,
                "state": conversation_state_name(conversation.state),
                "agent_id": conversation.agent_id,
                "reason": conversation.reason,
                "attempts": conversation.attempts,
                "queue_position": conversation.queue_position,
                "expected_wait_ms": conversation.expected_wait_ms,
            })),
        }
    }

    /// Something one simulated agent did or was told.
    pub fn agent_remark(&self, agent_id: &str, remark: &str) {
        match self.output {
            OutputFormat::Table => self.write_line(&format!("{agent_id} {remark}")),
            OutputFormat::Json => {
                self.write_json(json!({ "agent_id": agent_id, "remark": remark }))
            }
        }
    }

    /// A remark about the demo as a whole.
    pub fn remark(&self, remark: &str) {
        match self.output {
            OutputFormat::Table => self.write_line(remark),
            OutputFormat::Json => self.write_json(json!({ "remark": remark })),
        }
    }

    pub fn elapsed_text(&self) -> String {
        duration_text(elapsed_millis(self.started))
    }

    fn write_line(&self, line: &str) {
        let elapsed_seconds = elapsed_millis(self.started) as f64 / 1000.0;
        // Narration is best effort: a closed stdout must not abort the demo
        // halfway and leave its agents online, so write errors are dropped.
        let _ = print_output(&format!("[{elapsed_seconds:6.2}s] {line}"));
    }

    fn write_json(&self, mut value: serde_json::Value) {
        if let Some(object) = value.as_object_mut() {
            object.insert("elapsed_ms".to_owned(), json!(elapsed_millis(self.started)));
        }
        // Best effort, as in `write_line`.
        let _ = print_output(&value.to_string());
    }
}

fn elapsed_millis(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One readable line per event: `c-1 offered to demo-agent-2 (attempt 1)`.
///
/// A snapshot is described by the state it shows, so the first line of a
/// watch reads like any other event.
pub fn describe_conversation_event(label: &str, kind: &str, conversation: &Conversation) -> String {
    let state_name = conversation_state_name(conversation.state);
    let kind = if kind == "snapshot" {
        state_name.as_str()
    } else {
        kind
    };
    let agent = if conversation.agent_id.is_empty() {
        "no agent"
    } else {
        conversation.agent_id.as_str()
    };
    let because = if conversation.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", conversation.reason)
    };
    match kind {
        "queued" => format!(
            "{label} queued (position {}, expected wait {})",
            conversation.queue_position,
            duration_text(conversation.expected_wait_ms)
        ),
        "requeued" => format!("{label} requeued{because}"),
        "offered" => format!(
            "{label} offered to {agent} (attempt {})",
            conversation.attempts
        ),
        // Not in the contract's list of watch event kinds, but the server
        // sends it between "offered" and "requeued".
        "offer_revoked" if conversation.agent_id.is_empty() => {
            format!("{label} offer withdrawn{because}")
        }
        "offer_revoked" => format!("{label} offer to {agent} withdrawn{because}"),
        "assigned" => format!("{label} assigned to {agent}"),
        // The reason of a completed conversation ("completed by agent")
        // says nothing the line does not already say.
        "completed" if conversation.agent_id.is_empty() => format!("{label} completed"),
        "completed" => format!("{label} completed by {agent}"),
        other => format!("{label} {other}{because}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::v1::ConversationState;

    #[test]
    fn events_read_as_one_plain_line() {
        let mut conversation = Conversation {
            conversation_id: "demo-00ff-c-1".into(),
            state: ConversationState::Offered as i32,
            agent_id: "demo-agent-2".into(),
            attempts: 1,
            ..Default::default()
        };
        assert_eq!(
            describe_conversation_event("c-1", "offered", &conversation),
            "c-1 offered to demo-agent-2 (attempt 1)"
        );
        assert_eq!(
            describe_conversation_event("c-1", "snapshot", &conversation),
            "c-1 offered to demo-agent-2 (attempt 1)"
        );
        conversation.state = ConversationState::Queued as i32;
        conversation.agent_id.clear();
        conversation.reason = "offer timed out".into();
        assert_eq!(
            describe_conversation_event("c-1", "requeued", &conversation),
            "c-1 requeued: offer timed out"
        );
        conversation.state = ConversationState::Expired as i32;
        conversation.reason = "max wait exceeded".into();
        assert_eq!(
            describe_conversation_event("c-1", "expired", &conversation),
            "c-1 expired: max wait exceeded"
        );
        let reporter = Reporter::new(OutputFormat::Table, "demo-00ff-".into());
        assert_eq!(reporter.label("demo-00ff-c-1"), "c-1");
        assert_eq!(reporter.label("other-1"), "other-1");
    }
}
