//! `sbctl routing show` and `sbctl routing reload`: the routing config in
//! force, the version every live replica runs, and reloading the routing
//! file through one replica (with Redis, for every replica).

use anyhow::bail;
use serde_json::json;
use switchboard_proto::v1::{
    GetRoutingRequest, GetRoutingResponse, ReloadRoutingRequest, ReloadRoutingResponse,
    ReplicaRouting,
};

use crate::admin::AdminSession;
use crate::connection::unix_now_millis;
use crate::display::{OutputFormat, age_text, new_table, print_json, print_output, timestamp_text};

/// How an empty version reads: the built-in rules.
fn version_text(version: &str) -> &str {
    if version.is_empty() {
        "(built-in rules)"
    } else {
        version
    }
}

fn replicas_json(replicas: &[ReplicaRouting]) -> serde_json::Value {
    replicas
        .iter()
        .map(|r| {
            json!({
                "replica_id": r.replica_id,
                "version": r.version,
                "reported_at_ms": r.reported_at_ms,
            })
        })
        .collect()
}

/// One row per replica: id, version, whether it runs `expected`, age.
fn replicas_table(replicas: &[ReplicaRouting], expected: &str, now_millis: u64) -> String {
    let mut table = new_table(&["replica", "version", "in force", "reported"]);
    for replica in replicas {
        table.add_row(vec![
            replica.replica_id.clone(),
            version_text(&replica.version).to_owned(),
            if replica.version == expected {
                "yes".to_owned()
            } else {
                "NO".to_owned()
            },
            age_text(replica.reported_at_ms, now_millis),
        ]);
    }
    table.to_string()
}

pub fn show_text(routing: &GetRoutingResponse, now_millis: u64) -> String {
    let mut lines = Vec::new();
    let expected = match &routing.in_force {
        Some(in_force) => {
            lines.push(format!(
                "in force: {} (from {} on replica {}, since {})",
                in_force.version,
                in_force.source,
                in_force.activated_by,
                timestamp_text(in_force.activated_at_ms)
            ));
            in_force.version.clone()
        }
        None => {
            lines.push(format!("in force: {}", version_text(&routing.version)));
            routing.version.clone()
        }
    };
    let file = if routing.file.is_empty() {
        "no routing.file"
    } else {
        &routing.file
    };
    lines.push(format!(
        "this replica: {} runs {} ({file})",
        routing.replica_id,
        version_text(&routing.version)
    ));
    lines.push(replicas_table(&routing.replicas, &expected, now_millis));
    let behind = routing
        .replicas
        .iter()
        .filter(|r| r.version != expected)
        .count();
    if behind > 0 {
        lines.push(format!(
            "{behind} of {} live replica(s) do not run the version in force",
            routing.replicas.len()
        ));
    }
    lines.join("\n")
}

pub fn reload_text(reply: &ReloadRoutingResponse, now_millis: u64) -> String {
    let mut lines = Vec::new();
    if reply.previous_version.is_empty() || reply.previous_version == reply.version {
        lines.push(format!(
            "routing version {} in force (reloaded through replica {})",
            reply.version, reply.replica_id
        ));
    } else {
        lines.push(format!(
            "routing version in force: {} → {} (reloaded through replica {})",
            reply.previous_version, reply.version, reply.replica_id
        ));
    }
    lines.push(replicas_table(&reply.replicas, &reply.version, now_millis));
    let behind: Vec<&str> = reply
        .replicas
        .iter()
        .filter(|r| r.version != reply.version)
        .map(|r| r.replica_id.as_str())
        .collect();
    if !behind.is_empty() {
        lines.push(format!(
            "not yet running {}: {} (see their logs)",
            reply.version,
            behind.join(", ")
        ));
    }
    lines.join("\n")
}

impl AdminSession {
    /// `sbctl routing show`.
    pub async fn routing_show(&mut self) -> anyhow::Result<()> {
        let routing = self
            .server
            .call("get routing", self.client.get_routing(GetRoutingRequest {}))
            .await?;
        match self.output {
            OutputFormat::Json => print_json(&json!({
                "replica_id": routing.replica_id,
                "file": routing.file,
                "version": routing.version,
                "in_force": routing.in_force.as_ref().map(|f| json!({
                    "version": f.version,
                    "source": f.source,
                    "activated_by": f.activated_by,
                    "activated_at_ms": f.activated_at_ms,
                })),
                "replicas": replicas_json(&routing.replicas),
            })),
            OutputFormat::Table => print_output(&show_text(&routing, unix_now_millis())),
        }
    }

    /// `sbctl routing reload`: the new version, or every problem and a
    /// failure exit.
    pub async fn routing_reload(&mut self) -> anyhow::Result<()> {
        let reply = self
            .server
            .call(
                "reload routing",
                self.client.reload_routing(ReloadRoutingRequest {}),
            )
            .await?;
        if self.output == OutputFormat::Json {
            print_json(&json!({
                "applied": reply.applied,
                "version": reply.version,
                "previous_version": reply.previous_version,
                "errors": reply.errors,
                "replica_id": reply.replica_id,
                "replicas": replicas_json(&reply.replicas),
            }))?;
            if !reply.applied {
                bail!(
                    "routing file refused ({} problem(s)); version {} stays in force",
                    reply.errors.len(),
                    reply.version
                );
            }
            return Ok(());
        }
        if !reply.applied {
            let mut text = format!(
                "routing file refused ({} problem(s)); version {} stays in force:",
                reply.errors.len(),
                version_text(&reply.version)
            );
            for error in &reply.errors {
                text.push_str("\n  ");
                text.push_str(error);
            }
            bail!(text);
        }
        print_output(&reload_text(&reply, unix_now_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::v1::RoutingInForce;

    fn replica(id: &str, version: &str) -> ReplicaRouting {
        ReplicaRouting {
            replica_id: id.into(),
            version: version.into(),
            reported_at_ms: 1_000,
        }
    }

    #[test]
    fn show_lists_every_replica_and_flags_the_ones_behind() {
        let routing = GetRoutingResponse {
            file: "routing.toml".into(),
            version: "00000000000000aa".into(),
            replica_id: "a".into(),
            in_force: Some(RoutingInForce {
                version: "00000000000000bb".into(),
                source: "routing.toml".into(),
                activated_by: "b".into(),
                activated_at_ms: 1_000,
            }),
            replicas: vec![
                replica("a", "00000000000000aa"),
                replica("b", "00000000000000bb"),
            ],
        };
        let text = show_text(&routing, 3_000);
        assert!(text.contains("in force: 00000000000000bb"), "{text}");
        assert!(
            text.contains("this replica: a runs 00000000000000aa"),
            "{text}"
        );
        assert!(text.contains("NO"), "{text}");
        assert!(text.contains("1 of 2 live replica(s)"), "{text}");
    }

    #[test]
    fn reload_says_old_to_new_and_who_is_behind() {
        let reply = ReloadRoutingResponse {
            applied: true,
            version: "00000000000000bb".into(),
            errors: vec![],
            previous_version: "00000000000000aa".into(),
            replicas: vec![
                replica("a", "00000000000000bb"),
                replica("b", "00000000000000aa"),
            ],
            replica_id: "a".into(),
        };
        let text = reload_text(&reply, 3_000);
        assert!(
            text.contains("00000000000000aa → 00000000000000bb"),
            "{text}"
        );
        assert!(
            text.contains("not yet running 00000000000000bb: b"),
            "{text}"
        );
    }
}
