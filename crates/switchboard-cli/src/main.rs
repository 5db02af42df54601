//! `sbctl`: the operations CLI for a Switchboard server, and the demo.
//!
//! Every command connects to one server, authenticates with a bearer token
//! (given, or minted with the public development key for a development
//! server), makes its calls, and prints a table or JSON. Failures end as
//! one line on stderr, `sbctl: <what went wrong>`, and exit code 1.

mod admin;
mod connection;
mod demo;
mod display;
mod routing;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchboard_auth::Role;
use switchboard_proto::v1::{RosterEntry, Skill};

use crate::admin::AdminSession;
use crate::connection::{BearerToken, Server};
use crate::demo::DemoPlan;
use crate::display::OutputFormat;

/// Operate a Switchboard server: presence, queues, shifts and the roster;
/// or run a live demo against it.
#[derive(Debug, Parser)]
#[command(name = "sbctl", version)]
struct Cli {
    /// The server's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "SBCTL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,

    /// The pool (tenant or region) to operate on. A token given with
    /// --token names its own pool, which wins.
    #[arg(long, global = true, env = "SBCTL_POOL", default_value = "default")]
    pool: String,

    /// An admin token. Without one, sbctl mints a development token, which
    /// only a server in development mode accepts.
    // `hide_env_values`: `--help` must never print a token from the
    // environment.
    #[arg(long, global = true, env = "SBCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agents online: status, skills, load, stream and heartbeat.
    Agents,
    /// Queued conversations per skill, with the longest wait, and totals.
    Queue,
    /// Shift statistics per agent and in total.
    Shifts,
    /// Show or change the roster of agents allowed to work in the pool.
    Roster {
        #[command(subcommand)]
        action: RosterAction,
    },
    /// The routing config: the version in force and the one every live
    /// replica runs, or reload the routing file.
    Routing {
        #[command(subcommand)]
        action: RoutingAction,
    },
    /// End an agent's session now: its offers and conversations go back to
    /// the queue and its current tokens stop working.
    ForceOffline {
        /// The agent's id.
        #[arg(long = "agent", value_name = "ID")]
        agent_id: String,
        /// Why, for the agent and the audit trail.
        #[arg(long)]
        reason: String,
    },
    /// Simulated agents and a simulated gateway against the server, end to
    /// end over gRPC. Needs a server in development mode.
    Demo {
        /// Simulated agents to bring online.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=200))]
        agents: u32,
        /// Conversations to hand over.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
        conversations: u32,
        /// Seconds from the first hand-over until every conversation must
        /// have completed.
        #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_seconds: u64,
        /// Agent ids are PREFIX-1, PREFIX-2, ...; pick another prefix if
        /// `force-offline` revoked the default agents' tokens.
        #[arg(long, value_name = "PREFIX", default_value = "demo-agent")]
        agent_prefix: String,
    },
}

#[derive(Debug, Subcommand)]
enum RoutingAction {
    /// The routing version in force and the version each live replica runs.
    Show,
    /// Reload the routing file on the replica `--server` names; with Redis,
    /// put it in force for every replica. Prints the new version, or every
    /// problem of a refused file (and exits non-zero).
    Reload,
}

#[derive(Debug, Subcommand)]
enum RosterAction {
    /// List the roster entries.
    List,
    /// Create or replace one roster entry.
    Upsert {
        /// The agent's id.
        #[arg(long = "agent", value_name = "ID")]
        agent_id: String,
        /// The agent's display name.
        #[arg(long = "name", value_name = "NAME", default_value = "")]
        display_name: String,
        /// A verified skill as NAME:LEVEL (level 1-5); repeat for more.
        #[arg(long = "skill", value_name = "NAME:LEVEL", value_parser = parse_skill_argument)]
        skills: Vec<Skill>,
        /// A language as a BCP 47 tag (e.g. en, de-AT); repeat for more.
        #[arg(long = "language", value_name = "TAG")]
        languages: Vec<String>,
        /// The most conversations the agent may hold at once.
        #[arg(long = "capacity", default_value_t = 1)]
        max_capacity: u32,
        /// A region the agent may serve; repeat for more.
        #[arg(long = "region", value_name = "REGION")]
        allowed_regions: Vec<String>,
        /// A hard-constraint attribute, e.g. kyc_cleared; repeat for more.
        #[arg(long = "attribute", value_name = "ATTRIBUTE")]
        attributes: Vec<String>,
    },
}

/// clap wants a `String` error; the message is the anyhow one.
fn parse_skill_argument(text: &str) -> Result<Skill, String> {
    admin::parse_skill(text).map_err(|error| format!("{error:#}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain, once, on one line.
            eprintln!("sbctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        server: server_url,
        pool,
        token,
        json,
        command,
    } = cli;
    let output = if json {
        OutputFormat::Json
    } else {
        OutputFormat::Table
    };
    let admin = AdminOptions {
        server_url: &server_url,
        pool: &pool,
        token: token.as_deref(),
        output,
    };
    match command {
        Command::Agents => admin.session().await?.list_agents().await,
        Command::Queue => admin.session().await?.queue_stats().await,
        Command::Shifts => admin.session().await?.shift_stats().await,
        Command::Roster {
            action: RosterAction::List,
        } => admin.session().await?.list_roster().await,
        Command::Roster {
            action:
                RosterAction::Upsert {
                    agent_id,
                    display_name,
                    skills,
                    languages,
                    max_capacity,
                    allowed_regions,
                    attributes,
                },
        } => {
            let entry = RosterEntry {
                agent_id,
                display_name,
                skills,
                languages,
                max_capacity,
                allowed_regions,
                attributes,
            };
            admin.session().await?.upsert_roster_entry(entry).await
        }
        Command::Routing {
            action: RoutingAction::Show,
        } => admin.session().await?.routing_show().await,
        Command::Routing {
            action: RoutingAction::Reload,
        } => admin.session().await?.routing_reload().await,
        Command::ForceOffline { agent_id, reason } => {
            admin
                .session()
                .await?
                .force_offline(&agent_id, &reason)
                .await
        }
        Command::Demo {
            agents,
            conversations,
            timeout_seconds,
            agent_prefix,
        } => {
            if token.is_some() {
                // Not an error: the demo needs agent and gateway tokens,
                // which an admin token cannot stand in for.
                eprintln!(
                    "sbctl: note: the demo mints its own development tokens; --token is not used"
                );
            }
            let server = Server::connect(&server_url).await?;
            let plan = DemoPlan {
                agents,
                conversations,
                time_limit: Duration::from_secs(timeout_seconds),
                agent_prefix,
            };
            demo::run_demo(server, &pool, plan, output).await
        }
    }
}

/// What an admin command needs to open its session.
struct AdminOptions<'cli> {
    server_url: &'cli str,
    pool: &'cli str,
    token: Option<&'cli str>,
    output: OutputFormat,
}

impl AdminOptions<'_> {
    /// Makes the token, then connects. The token comes first so that a
    /// malformed one is reported even when the server is down.
    async fn session(&self) -> anyhow::Result<AdminSession> {
        let (token, pool_description) = match self.token {
            Some(token) => (
                BearerToken::from_token(token)?,
                "the token's pool".to_owned(),
            ),
            None => (
                BearerToken::mint_development(Role::Admin, self.pool, None)?,
                format!("pool `{}`", self.pool),
            ),
        };
        let server = Server::connect(self.server_url).await?;
        Ok(AdminSession::new(
            server,
            &token,
            &pool_description,
            self.output,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn roster_upsert_takes_repeated_flags() {
        let cli = Cli::try_parse_from([
            "sbctl",
            "roster",
            "upsert",
            "--agent",
            "alice",
            "--name",
            "Alice",
            "--skill",
            "billing:4",
            "--skill",
            "refunds:3",
            "--language",
            "en",
            "--language",
            "de",
            "--capacity",
            "2",
            "--region",
            "eu",
            "--attribute",
            "kyc_cleared",
        ])
        .unwrap();
        let Command::Roster {
            action:
                RosterAction::Upsert {
                    skills,
                    languages,
                    max_capacity,
                    ..
                },
        } = cli.command
        else {
            panic!("expected roster upsert");
        };
        assert_eq!(skills.len(), 2);
        assert_eq!(languages, ["en", "de"]);
        assert_eq!(max_capacity, 2);
        assert!(
            Cli::try_parse_from([
                "sbctl",
                "roster",
                "upsert",
                "--agent",
                "a",
                "--skill",
                "billing:9"
            ])
            .is_err()
        );
    }
}
