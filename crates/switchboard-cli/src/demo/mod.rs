//! `sbctl demo`: simulated agents and a simulated gateway against a real
//! server, over gRPC, narrated line by line.
//!
//! The order matters: every agent goes online and receives its stream's
//! snapshot before the first hand-over, because the server offers nothing
//! to an agent without an attached stream. Then the gateway hands the
//! conversations over and watches each. The demo succeeds when every
//! conversation completed within the time limit; whatever happens, the
//! agents go offline at the end and conversations still open are
//! cancelled, so a demo leaves the pool as it found it.

mod agent;
mod gateway;
mod report;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use switchboard_auth::Role;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;

use self::agent::SimulatedAgent;
use self::gateway::{ConversationBoard, DemoConversation, GatewayClient, WatchOutcome, Watcher};
use self::report::Reporter;
use crate::connection::{BearerToken, Server, call_failure_code};
use crate::display::OutputFormat;

/// How long every agent's event stream has to deliver its snapshot.
const AGENTS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Spacing between hand-overs, so the narration shows conversations
/// queueing behind busy agents instead of one burst.
const HAND_OVER_SPACING: Duration = Duration::from_millis(100);
/// How long the demo's background tasks get to stop at the end.
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoPlan {
    pub agents: u32,
    pub conversations: u32,
    /// From the first hand-over until every conversation must have ended.
    pub time_limit: Duration,
    /// Agent ids are `<agent_prefix>-1`, `<agent_prefix>-2`, ...
    pub agent_prefix: String,
}

/// Runs the demo in `pool`; `Ok` only if every conversation completed.
pub async fn run_demo(
    server: Server,
    pool: &str,
    plan: DemoPlan,
    output: OutputFormat,
) -> anyhow::Result<()> {
    // A fresh tag per run keeps conversation ids unique, so a second demo
    // against the same server is not answered with the first one's tickets
    // (hand-overs are idempotent on the id).
    let run_tag = format!("{:04x}", rand::random::<u16>());
    let conversation_id_prefix = format!("demo-{run_tag}-");
    let reporter = Arc::new(Reporter::new(output, conversation_id_prefix.clone()));
    reporter.remark(&format!(
        "demo in pool `{pool}` at {}: {} agents, {} conversations (ids {conversation_id_prefix}c-N)",
        server.url(),
        plan.agents,
        plan.conversations
    ));

    let gateway_token = BearerToken::mint_development(Role::Gateway, pool, None)?;
    let mut gateway_client = server.gateway_client(&gateway_token);
    let board = Arc::new(ConversationBoard::default());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut agents: Vec<SimulatedAgent> = Vec::new();

    let scenario = Scenario {
        server: &server,
        pool,
        plan,
        reporter: &reporter,
        board: &board,
        gateway_client: gateway_client.clone(),
        shutdown: &shutdown,
        tracker: &tracker,
        conversation_id_prefix: &conversation_id_prefix,
    };
    // Ctrl-C ends the scenario early but still runs the clean-up below.
    let outcome = tokio::select! {
        outcome = scenario.run(&mut agents) => outcome,
        interrupted = tokio::signal::ctrl_c() => match interrupted {
            Ok(()) => Err(anyhow!("interrupted")),
            Err(error) => Err(anyhow::Error::new(error).context("cannot listen for Ctrl-C")),
        },
    };

    // Clean-up, whatever the outcome: stop the simulated apps, cancel what
    // is still open, take the agents offline.
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(TASKS_STOP_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        reporter.remark("some demo tasks did not stop in time; leaving them");
    }
    let open_conversations = board.open_conversations();
    if !open_conversations.is_empty() {
        gateway::cancel_conversations(&server, &mut gateway_client, &reporter, &open_conversations)
            .await;
    }
    for agent in &mut agents {
        match agent.go_offline(&server).await {
            Ok(requeued) if requeued.is_empty() => {
                reporter.agent_remark(&agent.agent_id, "offline")
            }
            Ok(requeued) => reporter.agent_remark(
                &agent.agent_id,
                &format!("offline; the server requeued {}", requeued.join(", ")),
            ),
            Err(error) => reporter.remark(&format!("{error:#}")),
        }
    }
    outcome
}

/// The demo proper, between set-up and clean-up.
struct Scenario<'demo> {
    server: &'demo Server,
    pool: &'demo str,
    plan: DemoPlan,
    reporter: &'demo Arc<Reporter>,
    board: &'demo Arc<ConversationBoard>,
    gateway_client: GatewayClient,
    shutdown: &'demo CancellationToken,
    tracker: &'demo TaskTracker,
    conversation_id_prefix: &'demo str,
}

impl Scenario<'_> {
    /// Agents that went online are pushed onto `agents` as they do, so the
    /// caller takes them offline even if this fails halfway.
    async fn run(mut self, agents: &mut Vec<SimulatedAgent>) -> anyhow::Result<()> {
        self.bring_agents_online(agents).await?;
        let deadline = Instant::now() + self.plan.time_limit;
        let mut outcomes = self.hand_over_conversations().await?;
        self.wait_for_outcomes(&mut outcomes, deadline).await?;

        let total = self.board.count();
        let completed = self.board.completed_count();
        if completed < total {
            bail!(
                "demo failed: {completed} of {total} conversations completed; the others ended as {}",
                self.board.not_completed_summaries().join(", ")
            );
        }
        self.reporter.remark(&format!(
            "all {total} conversations completed in {}; `sbctl shifts` shows what the agents did",
            self.reporter.elapsed_text()
        ));
        Ok(())
    }

    async fn bring_agents_online(&self, agents: &mut Vec<SimulatedAgent>) -> anyhow::Result<()> {
        let mut ready_receivers = Vec::new();
        for number in 1..=self.plan.agents {
            let agent_id = format!("{}-{number}", self.plan.agent_prefix);
            let agent = SimulatedAgent::go_online(self.server, self.pool, &agent_id, self.reporter)
                .await
                .map_err(|error| {
                    let hint = match call_failure_code(&error) {
                        // The demo mints epoch-0 tokens; after `sbctl
                        // force-offline` the roster's epoch is higher and
                        // stays so for the life of the server, and the
                        // contract offers no way to read it.
                        Some(Code::Unauthenticated) => {
                            "either the server is not in development mode, or `sbctl force-offline` \
                             revoked this agent's tokens: then run the demo with another --agent-prefix"
                        }
                        _ => {
                            "the demo needs a server in development mode, which registers \
                             unknown agents as they go online"
                        }
                    };
                    error.context(format!("{agent_id} could not go online ({hint})"))
                })?;
            ready_receivers.push((
                agent_id,
                agent.start(self.server, self.tracker, self.shutdown, self.reporter),
            ));
            agents.push(agent);
        }
        let ready_deadline = Instant::now() + AGENTS_READY_TIMEOUT;
        for (agent_id, ready_receiver) in ready_receivers {
            match tokio::time::timeout_at(ready_deadline, ready_receiver).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    return Err(
                        error.context(format!("{agent_id} could not open its event stream"))
                    );
                }
                Ok(Err(_sender_dropped)) => {
                    bail!("{agent_id}'s event stream stopped before its first snapshot")
                }
                Err(_elapsed) => bail!(
                    "{agent_id}'s event stream delivered no snapshot within {} s",
                    AGENTS_READY_TIMEOUT.as_secs()
                ),
            }
        }
        self.reporter.remark(&format!(
            "{} agents online with their event streams attached",
            self.plan.agents
        ));
        Ok(())
    }

    /// Hands every conversation over and starts its watcher; returns the
    /// channel the watchers report on.
    async fn hand_over_conversations(
        &mut self,
    ) -> anyhow::Result<mpsc::UnboundedReceiver<WatchOutcome>> {
        let (outcome_sender, outcome_receiver) = mpsc::unbounded_channel();
        for number in 1..=self.plan.conversations {
            if number > 1 {
                tokio::time::sleep(HAND_OVER_SPACING).await;
            }
            let label = format!("c-{number}");
            let conversation = DemoConversation {
                conversation_id: format!("{}{label}", self.conversation_id_prefix),
                label,
            };
            let request = gateway::hand_over_request(&conversation, number);
            let response = self
                .server
                .call("request agent", self.gateway_client.request_agent(request))
                .await
                .with_context(|| format!("handing over {} failed", conversation.label))?;
            let ticket = response.conversation.with_context(|| {
                format!(
                    "the server accepted {} but returned no ticket",
                    conversation.label
                )
            })?;
            if !response.created {
                self.reporter.remark(&format!(
                    "{} was already known to the server; following the existing conversation",
                    conversation.label
                ));
            }
            let board_index = self.board.add(conversation.clone(), &ticket);
            let watcher = Watcher {
                server: self.server.clone(),
                client: self.gateway_client.clone(),
                board: Arc::clone(self.board),
                reporter: Arc::clone(self.reporter),
                conversation,
                board_index,
                outcome_sender: outcome_sender.clone(),
            };
            let shutdown = self.shutdown.clone();
            self.tracker.spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = watcher.run() => {}
                }
            });
        }
        Ok(outcome_receiver)
    }

    async fn wait_for_outcomes(
        &self,
        outcomes: &mut mpsc::UnboundedReceiver<WatchOutcome>,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let expected = self.board.count();
        let mut ended = 0;
        while ended < expected {
            match tokio::time::timeout_at(deadline, outcomes.recv()).await {
                Ok(Some(WatchOutcome::Ended)) => ended += 1,
                Ok(Some(WatchOutcome::GaveUp(error))) => return Err(error),
                // Every watcher holds a sender until it reports, so the
                // channel cannot close early; say so plainly if it does.
                Ok(None) => bail!("the conversation watchers stopped before reporting"),
                Err(_elapsed) => bail!(
                    "demo timed out after {} s: {} of {} conversations completed; not completed: {}",
                    self.plan.time_limit.as_secs(),
                    self.board.completed_count(),
                    expected,
                    self.board.not_completed_summaries().join(", ")
                ),
            }
        }
        Ok(())
    }
}
