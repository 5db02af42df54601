//! The tool's own record of every conversation it handed over, used for two
//! things: pairing the request's intended send time with the first offer
//! (wherever it shows up first: the RequestAgent answer or the agent
//! stream), and checking the invariants at the end (no conversation lost,
//! no agent over capacity, no offer to an agent that cannot serve it).
//!
//! Conversation ids are `<run id>-<sequence>`, so the ledger is keyed by the
//! sequence and an id from another run is simply not ours.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::metrics::{Metrics, Series};
use crate::profile::{AgentProfile, Requirement};

/// How the RequestAgent call answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The server found a free agent at once (state OFFERED).
    OfferedAtOnce,
    /// The server queued it (state QUEUED).
    Queued,
    /// The call failed: not the server's conversation, not lost.
    Failed,
}

#[derive(Debug)]
struct Record {
    intended: Instant,
    requirement: Requirement,
    /// Recorded into the histograms (sent after the warm-up).
    measured: bool,
    /// Some agent of this run can serve it.
    servable: bool,
    answer: Option<Answer>,
    first_offer_at: Option<Instant>,
    cancel_sent: bool,
    assigned: bool,
    ended: bool,
}

/// Invariant breaches, with a few examples for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Violations {
    pub lost_conversations: u64,
    pub over_capacity: u64,
    pub ineligible_offers: u64,
    pub examples: Vec<String>,
}

impl Violations {
    pub fn total(&self) -> u64 {
        self.lost_conversations + self.over_capacity + self.ineligible_offers
    }

    pub fn note(&mut self, example: String) {
        if self.examples.len() < 10 {
            self.examples.push(example);
        }
    }
}

/// Where the conversations stand at the end of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Settlement {
    pub requested: u64,
    pub failed_requests: u64,
    pub unservable: u64,
    pub cancelled: u64,
    pub assigned: u64,
    /// Neither assigned, ended nor cancelled: still waiting.
    pub outstanding: u64,
}

/// How many lost conversations the report names.
const LOST_EXAMPLES: usize = 5;

#[derive(Default)]
struct Inner {
    records: HashMap<u64, Record>,
    lost_examples: Vec<String>,
    violations: Violations,
}

pub struct Ledger {
    run_id: String,
    inner: Mutex<Inner>,
}

impl Ledger {
    /// `expected` requests are recorded without the table ever growing:
    /// growing it copies every record under the lock, in the gateway's
    /// real-time thread (at 1,000/s, 114,688 records took a 150 ms burst
    /// of that thread's core, starving whatever shared it, and the agents
    /// recording offers waited on the lock: the run measured the tool).
    pub fn new(run_id: String, expected: usize) -> Ledger {
        Ledger {
            run_id,
            inner: Mutex::new(Inner {
                records: HashMap::with_capacity(expected),
                ..Inner::default()
            }),
        }
    }

    /// How many requests the table holds before it has to grow.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.with(|inner| inner.records.capacity())
    }

    fn with<R>(&self, work: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut guard)
    }

    pub fn conversation_id(&self, sequence: u64) -> String {
        format!("{}-{sequence}", self.run_id)
    }

    /// The sequence of one of this run's conversation ids.
    pub fn sequence_of(&self, conversation_id: &str) -> Option<u64> {
        conversation_id
            .strip_prefix(self.run_id.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// Called before the RequestAgent call goes out (the offer may reach
    /// the agent before the answer reaches the gateway).
    pub fn requested(
        &self,
        sequence: u64,
        intended: Instant,
        requirement: Requirement,
        measured: bool,
        servable: bool,
    ) {
        self.with(|inner| {
            inner.records.insert(
                sequence,
                Record {
                    intended,
                    requirement,
                    measured,
                    servable,
                    answer: None,
                    first_offer_at: None,
                    cancel_sent: false,
                    assigned: false,
                    ended: false,
                },
            );
        });
    }

    /// The RequestAgent answer. Records request→offer if the offer was
    /// already seen.
    pub fn answered(&self, sequence: u64, answer: Answer, metrics: &Metrics) {
        self.with(|inner| {
            if let Some(record) = inner.records.get_mut(&sequence) {
                record.answer = Some(answer);
                record_offer_latency(record, metrics);
            }
        });
    }

    /// An offer reached `agent_id`. Returns false (and counts a violation)
    /// when the agent cannot serve the conversation.
    pub fn offered(
        &self,
        conversation_id: &str,
        at: Instant,
        agent_id: &str,
        agent: &AgentProfile,
        metrics: &Metrics,
    ) -> bool {
        let Some(sequence) = self.sequence_of(conversation_id) else {
            return true;
        };
        self.with(|inner| {
            let Some(record) = inner.records.get_mut(&sequence) else {
                return true;
            };
            let eligible = agent.can_serve(&record.requirement);
            if record.first_offer_at.is_none() {
                record.first_offer_at = Some(at);
                record_offer_latency(record, metrics);
            }
            if !eligible {
                let requirement = record.requirement;
                inner.violations.ineligible_offers += 1;
                inner.violations.note(format!(
                    "{conversation_id} (needs {requirement:?}) offered to {agent_id} ({agent:?})"
                ));
            }
            eligible
        })
    }

    /// An agent's accept was answered, or its stream showed the assignment.
    pub fn assigned(&self, conversation_id: &str, at: Instant, metrics: &Metrics) {
        let Some(sequence) = self.sequence_of(conversation_id) else {
            return;
        };
        self.with(|inner| {
            if let Some(record) = inner.records.get_mut(&sequence)
                && !record.assigned
            {
                record.assigned = true;
                if record.measured {
                    metrics.record(
                        Series::RequestToAssignedAgent,
                        at.saturating_duration_since(record.intended),
                    );
                }
            }
        });
    }

    /// The conversation reached a terminal state (completed, abandoned,
    /// expired).
    pub fn ended(&self, conversation_id: &str) {
        if let Some(sequence) = self.sequence_of(conversation_id) {
            self.with(|inner| {
                if let Some(record) = inner.records.get_mut(&sequence) {
                    record.ended = true;
                }
            });
        }
    }

    pub fn cancel_sent(&self, sequence: u64) {
        self.with(|inner| {
            if let Some(record) = inner.records.get_mut(&sequence) {
                record.cancel_sent = true;
            }
        });
    }

    /// Whether the gateway cancelled this conversation: a refusal of an
    /// agent's call on it is then the simulation's doing, not an error.
    pub fn was_cancelled(&self, conversation_id: &str) -> bool {
        self.sequence_of(conversation_id).is_some_and(|sequence| {
            self.with(|inner| {
                inner
                    .records
                    .get(&sequence)
                    .is_some_and(|record| record.cancel_sent)
            })
        })
    }

    /// `agent_id` was offered or assigned `conversation_id` while holding
    /// `held` at its capacity.
    pub fn over_capacity(
        &self,
        agent_id: &str,
        conversation_id: &str,
        held: &std::collections::HashSet<String>,
        capacity: usize,
    ) {
        self.with(|inner| {
            inner.violations.over_capacity += 1;
            let mut held: Vec<&str> = held.iter().map(String::as_str).collect();
            held.sort_unstable();
            inner.violations.note(format!(
                "{agent_id} (capacity {capacity}) got {conversation_id} while holding {held:?}"
            ));
        });
    }

    pub fn settlement(&self) -> Settlement {
        self.with(|inner| {
            let mut settlement = Settlement::default();
            for record in inner.records.values() {
                settlement.requested += 1;
                if record.answer == Some(Answer::Failed) {
                    settlement.failed_requests += 1;
                } else if record.cancel_sent {
                    settlement.cancelled += 1;
                } else if record.assigned || record.ended {
                    settlement.assigned += 1;
                } else if !record.servable {
                    settlement.unservable += 1;
                } else {
                    settlement.outstanding += 1;
                }
            }
            settlement
        })
    }

    /// Final check: every servable conversation that was neither cancelled
    /// nor refused was assigned or ended. Call after the drain.
    pub fn finish(&self) -> Violations {
        self.with(|inner| {
            let mut lost: Vec<u64> = inner
                .records
                .iter()
                .filter(|(_, record)| {
                    record.servable
                        && !record.cancel_sent
                        && record.answer != Some(Answer::Failed)
                        && !record.assigned
                        && !record.ended
                })
                .map(|(sequence, _)| *sequence)
                .collect();
            lost.sort_unstable();
            inner.violations.lost_conversations = lost.len() as u64;
            for sequence in lost.iter().take(LOST_EXAMPLES) {
                let example = format!(
                    "{}-{sequence} was never assigned nor ended (answer {:?})",
                    self.run_id,
                    inner.records.get(sequence).and_then(|record| record.answer)
                );
                inner.violations.note(example);
            }
            inner.lost_examples = lost
                .iter()
                .take(LOST_EXAMPLES)
                .map(|sequence| format!("{}-{sequence}", self.run_id))
                .collect();
            inner.violations.clone()
        })
    }

    /// The ids of the lost conversations [`Ledger::finish`] gave as
    /// examples, so the run can ask the server what became of them.
    pub fn lost_examples(&self) -> Vec<String> {
        self.with(|inner| inner.lost_examples.clone())
    }
}

fn record_offer_latency(record: &Record, metrics: &Metrics) {
    let (Some(answer), Some(offer_at)) = (record.answer, record.first_offer_at) else {
        return;
    };
    if !record.measured {
        return;
    }
    let latency = offer_at.saturating_duration_since(record.intended);
    metrics.record(Series::RequestToOffer, latency);
    metrics.record_offer_window(record.intended, latency);
    match answer {
        Answer::OfferedAtOnce => metrics.record(Series::RequestToOfferImmediate, latency),
        Answer::Queued => metrics.record(Series::RequestToOfferQueued, latency),
        Answer::Failed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn requirement() -> Requirement {
        Requirement {
            category: 0,
            language: 0,
            min_level: 2,
        }
    }

    #[test]
    fn the_table_holds_the_expected_requests_from_the_start() {
        let ledger = Ledger::new("r".to_owned(), 100_000);
        let capacity = ledger.capacity();
        assert!(capacity >= 100_000, "{capacity}");
        for sequence in 0..100_000 {
            ledger.requested(sequence, Instant::now(), requirement(), true, true);
        }
        assert_eq!(ledger.capacity(), capacity, "the table grew during the run");
    }

    #[test]
    fn offer_latency_is_recorded_whichever_comes_first() {
        let ledger = Ledger::new("r".to_owned(), 16);
        let metrics = Metrics::default();
        let agent = AgentProfile {
            skills: vec![(0, 3)],
            languages: vec![0],
        };
        let start = Instant::now();
        ledger.requested(1, start, requirement(), true, true);
        let offered_at = start + Duration::from_millis(3);
        assert!(ledger.offered("r-1", offered_at, "a", &agent, &metrics));
        ledger.answered(1, Answer::OfferedAtOnce, &metrics);
        let summary = metrics.summary();
        assert_eq!(summary.latency(Series::RequestToOfferImmediate).count, 1);
        assert_eq!(summary.latency(Series::RequestToOfferQueued).count, 0);
    }

    #[test]
    fn unassigned_servable_conversation_is_lost_and_ineligible_offer_counted() {
        let ledger = Ledger::new("r".to_owned(), 16);
        let metrics = Metrics::default();
        let start = Instant::now();
        ledger.requested(1, start, requirement(), true, true);
        ledger.requested(2, start, requirement(), true, true);
        ledger.requested(3, start, requirement(), true, true);
        ledger.assigned("r-1", start, &metrics);
        ledger.cancel_sent(2);
        let french_only = AgentProfile {
            skills: vec![(0, 5)],
            languages: vec![1],
        };
        assert!(!ledger.offered("r-3", start, "a", &french_only, &metrics));
        let violations = ledger.finish();
        assert_eq!(violations.lost_conversations, 1);
        assert_eq!(violations.ineligible_offers, 1);
        assert!(ledger.sequence_of("other-1").is_none());
    }
}
