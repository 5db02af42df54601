//! Turning protocol values into what a person reads: status names, skills,
//! durations, timestamps, tables, and writing them to stdout.

use std::io::{self, Write};

use anyhow::Context;
use chrono::DateTime;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use switchboard_proto::v1::{AgentStatus, ConversationState, Skill};

/// Human tables or JSON for scripts (`--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Writes `text` and a newline to stdout.
///
/// A closed pipe (`sbctl agents | head -1`) is not an error worth
/// reporting: the reader has what it wanted, so it ends the output quietly.
pub fn print_output(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// Pretty-printed JSON: readable by people and by `jq` alike.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode the output as JSON")?;
    print_output(&text)
}

/// A table in the house look, with the given header.
pub fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// Right-aligns the given columns (numbers and durations).
pub fn align_numbers_right(table: &mut Table, column_indices: &[usize]) {
    for &index in column_indices {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// `AGENT_STATUS_WRAP_UP` → `wrap-up`; an unknown number stays visible as
/// `unknown(7)` rather than being hidden.
pub fn agent_status_name(raw_status: i32) -> String {
    match AgentStatus::try_from(raw_status) {
        Ok(status) => short_enum_name(status.as_str_name(), "AGENT_STATUS_"),
        Err(_) => format!("unknown({raw_status})"),
    }
}

/// `CONVERSATION_STATE_QUEUED` → `queued`.
pub fn conversation_state_name(raw_state: i32) -> String {
    match ConversationState::try_from(raw_state) {
        Ok(state) => short_enum_name(state.as_str_name(), "CONVERSATION_STATE_"),
        Err(_) => format!("unknown({raw_state})"),
    }
}

fn short_enum_name(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_lowercase()
        .replace('_', "-")
}

/// `billing:4, refunds:3`, the same syntax `roster upsert --skill` takes.
pub fn skills_text(skills: &[Skill]) -> String {
    skills
        .iter()
        .map(|skill| format!("{}:{}", skill.name, skill.level))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Skills as JSON objects.
pub fn skills_json(skills: &[Skill]) -> serde_json::Value {
    skills
        .iter()
        .map(|skill| serde_json::json!({ "name": skill.name, "level": skill.level }))
        .collect()
}

/// A list, or `-` when empty so a blank cell is never ambiguous.
pub fn list_text(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// A duration at the precision a person cares about: `850ms`, `12.3s`,
/// `4m 05s`, `2h 03m`.
pub fn duration_text(milliseconds: u64) -> String {
    let seconds = milliseconds / 1000;
    if milliseconds < 1000 {
        format!("{milliseconds}ms")
    } else if seconds < 60 {
        // One decimal: integer arithmetic avoids float formatting quirks.
        format!("{}.{}s", seconds, (milliseconds % 1000) / 100)
    } else if seconds < 3600 {
        format!("{}m {:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}h {:02}m", seconds / 3600, (seconds % 3600) / 60)
    }
}

/// A server timestamp as UTC wall-clock time, `-` for 0 (never).
pub fn timestamp_text(epoch_millis: u64) -> String {
    if epoch_millis == 0 {
        return "-".to_owned();
    }
    i64::try_from(epoch_millis)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map_or_else(
            || format!("{epoch_millis} ms"),
            |time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// How long ago a server timestamp was, by this machine's clock: `3.2s ago`.
/// A timestamp slightly in the future (clock skew) reads `just now`.
pub fn age_text(epoch_millis: u64, now_millis: u64) -> String {
    if epoch_millis == 0 {
        "-".to_owned()
    } else if epoch_millis >= now_millis {
        "just now".to_owned()
    } else {
        format!("{} ago", duration_text(now_millis - epoch_millis))
    }
}

/// `yes` / `no` for table cells.
pub fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_sensible_precision() {
        assert_eq!(duration_text(0), "0ms");
        assert_eq!(duration_text(850), "850ms");
        assert_eq!(duration_text(12_345), "12.3s");
        assert_eq!(duration_text(245_000), "4m 05s");
        assert_eq!(duration_text(7_380_000), "2h 03m");
    }

    #[test]
    fn enum_names_are_short_and_unknown_values_stay_visible() {
        assert_eq!(agent_status_name(AgentStatus::WrapUp as i32), "wrap-up");
        assert_eq!(
            conversation_state_name(ConversationState::Queued as i32),
            "queued"
        );
        assert_eq!(agent_status_name(42), "unknown(42)");
    }

    #[test]
    fn timestamps_and_ages() {
        assert_eq!(timestamp_text(0), "-");
        assert_eq!(timestamp_text(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(age_text(9_000, 12_500), "3.5s ago");
        assert_eq!(age_text(13_000, 12_500), "just now");
    }
}
