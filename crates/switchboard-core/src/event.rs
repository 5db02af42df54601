//! Events: every state change appends one. Streams deliver them at least
//! once; per-conversation sequence numbers let clients drop repeats.

use crate::ids::{AgentId, ConversationId, OfferId, PoolId};
use crate::model::{AgentStatus, Conversation};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The reason of an offer withdrawn because the agent's stream did not take
/// it within the delivery grace. The store then detaches that stream (no
/// more offers through it), so a server ends the stream and the app
/// subscribes again for a snapshot.
pub const OFFER_NOT_DELIVERED: &str = "offer not delivered";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub pool: PoolId,
    pub at: Timestamp,
    /// The agent the event is for (offered, assigned, notified), if any.
    pub agent_id: Option<AgentId>,
    /// Per-conversation sequence number; 0 for agent-level events.
    pub seq: u64,
    pub kind: EventKind,
}

impl Event {
    pub fn conversation_id(&self) -> Option<&ConversationId> {
        self.kind.conversation().map(|c| c.id())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A new conversation entered the queue.
    Queued { conversation: Arc<Conversation> },
    /// Offered to `agent_id` until the deadline.
    Offered {
        offer: OfferId,
        deadline: Timestamp,
        conversation: Arc<Conversation>,
    },
    /// An offer was taken back from `agent_id` (never re-sent).
    OfferRevoked {
        offer: OfferId,
        reason: String,
        conversation: Arc<Conversation>,
    },
    /// Back in the queue (declined, timed out, agent lost, withdrawn).
    Requeued { conversation: Arc<Conversation> },
    /// Assigned to `agent_id`.
    Assigned { conversation: Arc<Conversation> },
    /// Finished: completed, abandoned or expired.
    Ended { conversation: Arc<Conversation> },
    /// Agent-level notice: status changes, missed offers, forced offline.
    Notice {
        code: String,
        message: String,
        status: AgentStatus,
    },
}

impl EventKind {
    pub fn conversation(&self) -> Option<&Conversation> {
        match self {
            EventKind::Queued { conversation }
            | EventKind::Offered { conversation, .. }
            | EventKind::OfferRevoked { conversation, .. }
            | EventKind::Requeued { conversation }
            | EventKind::Assigned { conversation }
            | EventKind::Ended { conversation } => Some(conversation),
            EventKind::Notice { .. } => None,
        }
    }

    /// The name the gateway's watch stream uses.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Queued { .. } => "queued",
            EventKind::Offered { .. } => "offered",
            EventKind::OfferRevoked { .. } => "offer_revoked",
            EventKind::Requeued { .. } => "requeued",
            EventKind::Assigned { .. } => "assigned",
            EventKind::Ended { conversation } => conversation.state.as_str(),
            EventKind::Notice { .. } => "notice",
        }
    }
}
