//! A simulated agent app: goes online, holds its event stream, heartbeats,
//! accepts every offer after a short think time and completes each
//! conversation after a while, as a quick and agreeable human would.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use switchboard_auth::Role;
use switchboard_proto::v1::agent_event::Kind;
use switchboard_proto::v1::agent_service_client::AgentServiceClient;
use switchboard_proto::v1::{
    AcceptOfferRequest, AgentEvent, CompleteConversationRequest, Conversation, GoOfflineRequest,
    GoOnlineRequest, HeartbeatRequest, Offer, Skill, SubscribeRequest,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::report::Reporter;
use crate::connection::{AuthenticatedChannel, BearerToken, Server};
use crate::display::{agent_status_name, duration_text, list_text, skills_text};

/// How long the simulated agent reads an offer before accepting it.
const THINK_TIME: Duration = Duration::from_millis(200);
/// The simulated agent handles a conversation for a random time in this
/// range (milliseconds), so completions do not arrive in lockstep.
const HANDLE_TIME_RANGE_MILLIS: std::ops::RangeInclusive<u64> = 300..=800;
/// Used when the server's GoOnline answer names no heartbeat interval.
const FALLBACK_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Pause before resubscribing after the event stream failed or ended.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// What every demo agent offers: the demo's conversations need billing at
/// level 2 in English, so level 4 qualifies with room to spare.
fn demo_skills() -> Vec<Skill> {
    vec![Skill {
        name: "billing".to_owned(),
        level: 4,
    }]
}

/// An agent that is online. Dropping it does not take it offline: the demo
/// calls [`SimulatedAgent::go_offline`] on the way out.
pub struct SimulatedAgent {
    pub agent_id: String,
    client: AgentServiceClient<AuthenticatedChannel>,
    heartbeat_interval: Duration,
}

impl SimulatedAgent {
    /// Goes online with the demo's skills, English and capacity 1. In
    /// development mode the server registers an unknown agent from this.
    pub async fn go_online(
        server: &Server,
        pool: &str,
        agent_id: &str,
        reporter: &Reporter,
    ) -> anyhow::Result<Self> {
        let token = BearerToken::mint_development(Role::Agent, pool, Some(agent_id))?;
        let mut client = server.agent_client(&token);
        let request = GoOnlineRequest {
            skills: demo_skills(),
            languages: vec!["en".to_owned()],
            capacity: 1,
            location: None,
        };
        let online = server.call("go online", client.go_online(request)).await?;
        let heartbeat_interval = match online.heartbeat_interval_ms {
            0 => FALLBACK_HEARTBEAT_INTERVAL,
            milliseconds => Duration::from_millis(milliseconds),
        };
        reporter.agent_remark(
            agent_id,
            &format!(
                "online: {}, skills {}, languages {}, capacity {}, heartbeat every {}",
                agent_status_name(online.status),
                skills_text(&online.skills),
                list_text(&online.languages),
                online.capacity,
                duration_text(u64::try_from(heartbeat_interval.as_millis()).unwrap_or(u64::MAX)),
            ),
        );
        Ok(SimulatedAgent {
            agent_id: agent_id.to_owned(),
            client,
            heartbeat_interval,
        })
    }

    /// Starts the heartbeat and the event stream on `tracker`. The returned
    /// receiver fires when the stream has delivered its snapshot, from
    /// which point the server can offer this agent work, or with the error
    /// that kept the first subscription from opening.
    pub fn start(
        &self,
        server: &Server,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        reporter: &Arc<Reporter>,
    ) -> oneshot::Receiver<anyhow::Result<()>> {
        let (ready_sender, ready_receiver) = oneshot::channel();
        let event_loop = AgentEventLoop {
            agent_id: self.agent_id.clone(),
            server: server.clone(),
            client: self.client.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            reporter: Arc::clone(reporter),
            ready_sender: Some(ready_sender),
            events_seen: HashSet::new(),
            offers_taken: HashSet::new(),
            conversations_taken: HashSet::new(),
        };
        tracker.spawn(until_shutdown(shutdown.clone(), event_loop.run()));
        tracker.spawn(until_shutdown(
            shutdown.clone(),
            heartbeat_loop(
                self.agent_id.clone(),
                server.clone(),
                self.client.clone(),
                self.heartbeat_interval,
                Arc::clone(reporter),
            ),
        ));
        ready_receiver
    }

    /// Goes offline; returns the conversations the server put back in the
    /// queue (none, if the agent finished its work).
    pub async fn go_offline(&mut self, server: &Server) -> anyhow::Result<Vec<String>> {
        let response = server
            .call(
                "go offline",
                self.client.go_offline(GoOfflineRequest { drain: false }),
            )
            .await
            .with_context(|| format!("{} could not go offline", self.agent_id))?;
        Ok(response.requeued_conversation_ids)
    }
}

/// Runs `work` until it finishes or the demo shuts down, whichever is
/// first; in-flight calls are dropped at shutdown, which is what a closing
/// app does too.
async fn until_shutdown(shutdown: CancellationToken, work: impl Future<Output = ()>) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = work => {}
    }
}

/// Renews the presence lease at the interval the server asked for.
async fn heartbeat_loop(
    agent_id: String,
    server: Server,
    mut client: AgentServiceClient<AuthenticatedChannel>,
    interval: Duration,
    reporter: Arc<Reporter>,
) {
    loop {
        tokio::time::sleep(interval).await;
        // A failed heartbeat is reported and retried at the next beat: the
        // lease outlives a few intervals, so one lost beat is harmless.
        if let Err(error) = server
            .call(
                "heartbeat",
                client.heartbeat(HeartbeatRequest { location: None }),
            )
            .await
        {
            reporter.agent_remark(&agent_id, &format!("heartbeat failed: {error:#}"));
        }
    }
}

/// The agent's side of its event stream. All de-duplication state lives
/// here, in one task, so it needs no lock.
struct AgentEventLoop {
    agent_id: String,
    server: Server,
    client: AgentServiceClient<AuthenticatedChannel>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    reporter: Arc<Reporter>,
    /// Fired on the first snapshot, or with the error of the first
    /// subscription.
    ready_sender: Option<oneshot::Sender<anyhow::Result<()>>>,
    /// `(conversation_id, seq)` pairs already handled: the stream is
    /// at-least-once, and a resubscribe replays events.
    events_seen: HashSet<(String, u64)>,
    /// Offers already being accepted, by `(conversation_id, attempt)`: a
    /// snapshot after a resubscribe lists pending offers again.
    offers_taken: HashSet<(String, u32)>,
    /// Conversations already being completed, for the same reason.
    conversations_taken: HashSet<String>,
}

impl AgentEventLoop {
    /// Subscribes, handles events, and resubscribes whenever the stream
    /// fails or ends, until the demo shuts down (which drops this future).
    ///
    /// A first subscription that cannot open ends the loop and hands its
    /// error to the demo: retrying a refused token or a missing method
    /// would only repeat the same line until the demo times out.
    async fn run(mut self) {
        loop {
            let subscription = self
                .server
                .call("subscribe", self.client.subscribe(SubscribeRequest {}))
                .await;
            match subscription {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(event)) => self.handle(event),
                        Ok(None) => {
                            self.remark("event stream ended; resubscribing");
                            break;
                        }
                        Err(status) => {
                            let error = self.server.explain("event stream", &status);
                            self.remark(&format!("event stream failed: {error:#}; resubscribing"));
                            break;
                        }
                    }
                },
                Err(error) => match self.ready_sender.take() {
                    Some(ready_sender) => {
                        let _ = ready_sender.send(Err(error));
                        return;
                    }
                    None => self.remark(&format!("cannot subscribe: {error:#}; retrying")),
                },
            }
            tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
        }
    }

    fn handle(&mut self, event: AgentEvent) {
        // Sequence 0 marks agent-level events and snapshots, which are not
        // numbered and so cannot be de-duplicated; handling them twice is
        // harmless because offers and assignments are de-duplicated below.
        if event.seq != 0
            && !self
                .events_seen
                .insert((event.conversation_id.clone(), event.seq))
        {
            return;
        }
        let Some(kind) = event.kind else {
            self.remark("received an event with no content; ignoring it");
            return;
        };
        match kind {
            Kind::Snapshot(snapshot) => {
                if let Some(ready_sender) = self.ready_sender.take() {
                    // The receiver is gone only if the demo already gave up.
                    let _ = ready_sender.send(Ok(()));
                }
                for offer in snapshot.offers {
                    self.accept_after_thinking(offer);
                }
                for conversation in snapshot.assignments {
                    self.complete_after_handling(conversation);
                }
            }
            Kind::Offer(offer) => self.accept_after_thinking(offer),
            Kind::Assignment(assignment) => match assignment.conversation {
                Some(conversation) => self.complete_after_handling(conversation),
                None => self.remark("received an assignment with no conversation; ignoring it"),
            },
            Kind::OfferRevoked(revoked) => {
                let conversation_id = revoked
                    .offer_id
                    .map(|offer_id| offer_id.conversation_id)
                    .unwrap_or_default();
                let label = self.reporter.label(&conversation_id).to_owned();
                self.remark(&format!("lost the offer for {label}: {}", revoked.reason));
            }
            // The gateway's watch narrates the end of each conversation.
            Kind::ConversationEnded(_) => {}
            Kind::Notice(notice) => {
                self.remark(&format!(
                    "notice {}: {} (status {})",
                    notice.code,
                    notice.message,
                    agent_status_name(notice.status)
                ));
            }
        }
    }

    /// Accepts the offer after [`THINK_TIME`], once per offer.
    fn accept_after_thinking(&mut self, offer: Offer) {
        let Some(offer_id) = offer.offer_id else {
            self.remark("received an offer with no offer id; ignoring it");
            return;
        };
        if !self
            .offers_taken
            .insert((offer_id.conversation_id.clone(), offer_id.attempt))
        {
            return;
        }
        let (agent_id, server, mut client, reporter) = self.task_parts();
        self.tracker
            .spawn(until_shutdown(self.shutdown.clone(), async move {
                tokio::time::sleep(THINK_TIME).await;
                let label = reporter.label(&offer_id.conversation_id).to_owned();
                let request = AcceptOfferRequest {
                    offer_id: Some(offer_id),
                };
                // On success there is nothing to say here: the assignment
                // arrives on the event stream and the gateway narrates it.
                if let Err(error) = server
                    .call("accept offer", client.accept_offer(request))
                    .await
                {
                    reporter
                        .agent_remark(&agent_id, &format!("could not accept {label}: {error:#}"));
                }
            }));
    }

    /// Completes the conversation after a random handle time, once per
    /// conversation.
    fn complete_after_handling(&mut self, conversation: Conversation) {
        if !self
            .conversations_taken
            .insert(conversation.conversation_id.clone())
        {
            return;
        }
        let handle_time = Duration::from_millis(rand::rng().random_range(HANDLE_TIME_RANGE_MILLIS));
        let (agent_id, server, mut client, reporter) = self.task_parts();
        self.tracker
            .spawn(until_shutdown(self.shutdown.clone(), async move {
                tokio::time::sleep(handle_time).await;
                let label = reporter.label(&conversation.conversation_id).to_owned();
                let request = CompleteConversationRequest {
                    conversation_id: conversation.conversation_id,
                    disposition: "resolved".to_owned(),
                };
                if let Err(error) = server
                    .call(
                        "complete conversation",
                        client.complete_conversation(request),
                    )
                    .await
                {
                    reporter
                        .agent_remark(&agent_id, &format!("could not complete {label}: {error:#}"));
                }
            }));
    }

    /// Owned copies of what a spawned task needs.
    fn task_parts(
        &self,
    ) -> (
        String,
        Server,
        AgentServiceClient<AuthenticatedChannel>,
        Arc<Reporter>,
    ) {
        (
            self.agent_id.clone(),
            self.server.clone(),
            self.client.clone(),
            Arc::clone(&self.reporter),
        )
    }

    fn remark(&self, remark: &str) {
        self.reporter.agent_remark(&self.agent_id, remark);
    }
}
