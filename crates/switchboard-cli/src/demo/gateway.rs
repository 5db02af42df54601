//! The demo's chat gateway: hands conversations over and watches each one
//! until it ends, narrating every event once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use switchboard_proto::v1::gateway_service_client::GatewayServiceClient;
use switchboard_proto::v1::{
    CancelConversationRequest, Conversation, ConversationState, HandoffContext,
    RequestAgentRequest, Skill, WatchConversationRequest,
};
use tokio::sync::mpsc;

use super::report::Reporter;
use crate::connection::{AuthenticatedChannel, Server};
use crate::display::conversation_state_name;

/// Watch attempts in a row that may fail without delivering any event
/// before the watcher gives up and fails the demo.
const WATCH_ATTEMPTS_WITHOUT_PROGRESS: u32 = 5;
/// Pause before watching again after a watch failed or ended early.
const REWATCH_PAUSE: Duration = Duration::from_secs(1);

pub type GatewayClient = GatewayServiceClient<AuthenticatedChannel>;

/// One demo conversation: its short label and its id on the server.
#[derive(Clone, Debug)]
pub struct DemoConversation {
    pub label: String,
    pub conversation_id: String,
}

/// The hand-over the demo sends: English, billing at level 2 or better.
pub fn hand_over_request(conversation: &DemoConversation, number: u32) -> RequestAgentRequest {
    RequestAgentRequest {
        conversation_id: conversation.conversation_id.clone(),
        customer_id: format!("demo-customer-{number}"),
        language: "en".to_owned(),
        category: "billing".to_owned(),
        required_skills: vec![Skill {
            name: "billing".to_owned(),
            level: 2,
        }],
        priority: 0,
        context: Some(HandoffContext {
            summary: format!(
                "demo hand-off {number}: the customer disputes a charge on their last invoice"
            ),
            attributes: HashMap::from([("source".to_owned(), "sbctl demo".to_owned())]),
        }),
        // Every other customer asked for a person, to show both kinds.
        customer_asked_for_human: number % 2 == 0,
        chat_reference: format!("chat://demo/{}", conversation.conversation_id),
        preferred_agent_id: String::new(),
        customer_location: None,
        region: String::new(),
    }
}

/// How a watch ended.
#[derive(Debug)]
pub enum WatchOutcome {
    /// The conversation reached a terminal state (completed or not: the
    /// board says which).
    Ended,
    /// The watch kept failing; the demo cannot tell what happened.
    GaveUp(anyhow::Error),
}

/// The latest known state of every demo conversation, for the final
/// verdict and for the timeout message.
///
/// A `std::sync::Mutex` and not a tokio one: it is never held across an
/// `.await`, only for a quick read or write.
#[derive(Debug, Default)]
pub struct ConversationBoard {
    entries: Mutex<Vec<BoardEntry>>,
}

#[derive(Clone, Debug)]
struct BoardEntry {
    conversation: DemoConversation,
    state: i32,
    agent_id: String,
    reason: String,
}

impl BoardEntry {
    fn is_terminal(&self) -> bool {
        is_terminal_state(self.state)
    }

    fn completed(&self) -> bool {
        self.state == ConversationState::Completed as i32
    }

    /// `c-5 (queued)`, `c-6 (offered to demo-agent-1)`, `c-3 (expired: max wait exceeded)`.
    fn summary(&self) -> String {
        let mut detail = conversation_state_name(self.state);
        if !self.agent_id.is_empty() && !self.is_terminal() {
            detail.push_str(&format!(" to {}", self.agent_id));
        }
        if !self.reason.is_empty() && !self.completed() {
            detail.push_str(&format!(": {}", self.reason));
        }
        format!("{} ({detail})", self.conversation.label)
    }
}

impl ConversationBoard {
    fn entries(&self) -> MutexGuard<'_, Vec<BoardEntry>> {
        // A panic elsewhere while holding the lock leaves plain data that is
        // still worth reporting, so a poisoned lock is used as is.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a handed-over conversation; returns its index for updates.
    pub fn add(&self, conversation: DemoConversation, ticket: &Conversation) -> usize {
        let mut entries = self.entries();
        entries.push(BoardEntry {
            conversation,
            state: ticket.state,
            agent_id: ticket.agent_id.clone(),
            reason: ticket.reason.clone(),
        });
        entries.len() - 1
    }

    fn update(&self, index: usize, conversation: &Conversation) {
        if let Some(entry) = self.entries().get_mut(index) {
            entry.state = conversation.state;
            entry.agent_id = conversation.agent_id.clone();
            entry.reason = conversation.reason.clone();
        }
    }

    pub fn count(&self) -> usize {
        self.entries().len()
    }

    pub fn completed_count(&self) -> usize {
        self.entries()
            .iter()
            .filter(|entry| entry.completed())
            .count()
    }

    /// Conversations not yet in a terminal state.
    pub fn open_conversations(&self) -> Vec<DemoConversation> {
        self.entries()
            .iter()
            .filter(|entry| !entry.is_terminal())
            .map(|entry| entry.conversation.clone())
            .collect()
    }

    /// Summaries of the conversations that did not complete (still open,
    /// expired, abandoned), for the failure message.
    pub fn not_completed_summaries(&self) -> Vec<String> {
        self.entries()
            .iter()
            .filter(|entry| !entry.completed())
            .map(BoardEntry::summary)
            .collect()
    }
}

fn is_terminal_state(state: i32) -> bool {
    [
        ConversationState::Completed,
        ConversationState::Abandoned,
        ConversationState::Expired,
    ]
    .iter()
    .any(|terminal| *terminal as i32 == state)
}

/// Everything one watcher task needs.
pub struct Watcher {
    pub server: Server,
    pub client: GatewayClient,
    pub board: Arc<ConversationBoard>,
    pub reporter: Arc<Reporter>,
    pub conversation: DemoConversation,
    pub board_index: usize,
    pub outcome_sender: mpsc::UnboundedSender<WatchOutcome>,
}

impl Watcher {
    /// Watches until the conversation ends, re-watching after failures
    /// (the watch is at-least-once: a new watch starts with a snapshot,
    /// and events already shown are dropped by sequence number).
    pub async fn run(mut self) {
        let outcome = self.watch_until_ended().await;
        // The receiver is gone only if the demo already finished.
        let _ = self.outcome_sender.send(outcome);
    }

    async fn watch_until_ended(&mut self) -> WatchOutcome {
        let label = self.conversation.label.clone();
        // Highest sequence number narrated so far.
        let mut highest_seq_shown: Option<u64> = None;
        let mut attempts_without_progress = 0;
        loop {
            if attempts_without_progress == WATCH_ATTEMPTS_WITHOUT_PROGRESS {
                return WatchOutcome::GaveUp(anyhow::anyhow!(
                    "watching {label} failed {WATCH_ATTEMPTS_WITHOUT_PROGRESS} times in a row"
                ));
            }
            attempts_without_progress += 1;
            let request = WatchConversationRequest {
                conversation_id: self.conversation.conversation_id.clone(),
            };
            let mut stream = match self
                .server
                .call(
                    "watch conversation",
                    self.client.watch_conversation(request),
                )
                .await
            {
                Ok(stream) => stream,
                Err(error) => {
                    self.reporter
                        .remark(&format!("{label}: cannot watch: {error:#}"));
                    tokio::time::sleep(REWATCH_PAUSE).await;
                    continue;
                }
            };
            loop {
                let event = match stream.message().await {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        self.reporter.remark(&format!(
                            "{label}: watch ended before the conversation did; watching again"
                        ));
                        break;
                    }
                    Err(status) => {
                        let error = self.server.explain("watch conversation", &status);
                        self.reporter
                            .remark(&format!("{label}: watch failed: {error:#}; watching again"));
                        break;
                    }
                };
                attempts_without_progress = 0;
                let Some(conversation) = event.conversation else {
                    self.reporter.remark(&format!(
                        "{label}: {} event with no conversation; ignoring it",
                        event.kind
                    ));
                    continue;
                };
                // A snapshot carries the conversation's highest sequence
                // number; later events must be above what was shown. Seq 0
                // is unnumbered and always shown.
                let seq = if event.kind == "snapshot" {
                    event.seq.max(conversation.seq)
                } else {
                    event.seq
                };
                let already_shown =
                    seq != 0 && highest_seq_shown.is_some_and(|highest| seq <= highest);
                if already_shown {
                    continue;
                }
                highest_seq_shown = Some(highest_seq_shown.unwrap_or(0).max(seq));
                self.reporter
                    .conversation_event(&event.kind, seq, &conversation);
                self.board.update(self.board_index, &conversation);
                if is_terminal_state(conversation.state) {
                    return WatchOutcome::Ended;
                }
            }
            tokio::time::sleep(REWATCH_PAUSE).await;
        }
    }
}

/// Cancels the given conversations, best effort, so a failed demo leaves
/// nothing waiting in the server's queue.
pub async fn cancel_conversations(
    server: &Server,
    client: &mut GatewayClient,
    reporter: &Reporter,
    conversations: &[DemoConversation],
) {
    for conversation in conversations {
        let request = CancelConversationRequest {
            conversation_id: conversation.conversation_id.clone(),
            reason: "sbctl demo ended".to_owned(),
        };
        match server
            .call("cancel conversation", client.cancel_conversation(request))
            .await
        {
            Ok(_) => reporter.remark(&format!("{} cancelled", conversation.label)),
            Err(error) => reporter.remark(&format!(
                "{} could not be cancelled: {error:#}",
                conversation.label
            )),
        }
    }
}
