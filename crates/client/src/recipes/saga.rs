//! A saga coordinator whose log lives in the store.
//!
//! A saga is a list of [`Step`]s, each an action and the compensation that undoes it. The
//! coordinator runs the actions in order; if one fails, it runs the compensations of the steps
//! already done, last first. Before and after each step it records where it is in the saga's
//! log key, with a compare-and-swap on the key's revision, so that:
//!
//! - a coordinator that crashes can be replaced by another that calls [`Saga::run`] with the
//!   same steps: it reads the log and carries on (re-running the step that was in progress,
//!   or the compensations that were left);
//! - two coordinators never drive one saga at once: the second's first log write fails and it
//!   stops with an error.
//!
//! Actions and compensations are therefore run at least once: they must be idempotent (keyed by
//! the saga's id, for example). The log is `<saga>/log`; it is kept after the end, as the
//! record of the outcome.
//!
//! ```
//! use chorus_client::recipes::saga::{Outcome, Saga, Step};
//! use chorus_client::{Client, ClientOptions};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = chorus_server::local::LocalMember::start().await?;
//! # let endpoint = server.endpoint();
//! // `endpoint` is a member's client URL, such as "http://127.0.0.1:2379".
//! let client = Client::connect([endpoint], ClientOptions::default()).await?;
//! let steps = vec![
//!     Step::new("reserve-seat", || async { Ok(()) }, || async { Ok(()) }),
//!     Step::new("charge-card", || async { Err("card declined".to_string()) }, || async { Ok(()) }),
//! ];
//! let saga = Saga::new(client, "sagas/booking-1234");
//! match saga.run(&steps).await? {
//!     Outcome::Committed => println!("booked"),
//!     Outcome::Compensated { failed_step, error } => println!("{failed_step} failed: {error}"),
//! }
//! // The outcome is in the saga's log: a coordinator that runs it again only reads it.
//! assert_eq!(
//!     saga.run(&steps).await?,
//!     Outcome::Compensated { failed_step: "charge-card".into(), error: "card declined".into() },
//! );
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::dir;
use crate::error::{Error, Result};
use crate::txn::{Cmp, Compare, Op, Txn};
use crate::{Client, GetOptions, PutOptions};

/// What an action or a compensation returns: `Err` carries why it failed.
pub type StepFuture = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;

type StepFn = Box<dyn Fn() -> StepFuture + Send + Sync>;

/// One step of a saga.
pub struct Step {
    name: String,
    action: StepFn,
    compensation: StepFn,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step").field("name", &self.name).finish()
    }
}

impl Step {
    /// A step called `name` (no newline in it) with its action and its compensation.
    pub fn new<A, AF, C, CF>(name: &str, action: A, compensation: C) -> Step
    where
        A: Fn() -> AF + Send + Sync + 'static,
        AF: Future<Output = std::result::Result<(), String>> + Send + 'static,
        C: Fn() -> CF + Send + Sync + 'static,
        CF: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        Step {
            name: name.replace('\n', " "),
            action: Box::new(move || Box::pin(action())),
            compensation: Box::new(move || Box::pin(compensation())),
        }
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How a saga ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every action succeeded.
    Committed,
    /// `failed_step` failed with `error`; the steps before it were compensated.
    Compensated {
        /// The step whose action failed.
        failed_step: String,
        /// Why.
        error: String,
    },
}

/// Where a saga is, as its log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Steps below `next` are done; `next` may have started.
    Running {
        next: usize,
    },
    /// The step `failed` failed; steps below `left` still need their compensation.
    Compensating {
        left: usize,
        failed: String,
        error: String,
    },
    Committed,
    Compensated {
        failed: String,
        error: String,
    },
}

impl State {
    fn encode(&self) -> String {
        match self {
            State::Running { next } => format!("running\n{next}"),
            State::Compensating {
                left,
                failed,
                error,
            } => format!("compensating\n{left}\n{failed}\n{error}"),
            State::Committed => "committed".to_string(),
            State::Compensated { failed, error } => format!("compensated\n{failed}\n{error}"),
        }
    }

    fn decode(text: &str) -> Option<State> {
        let mut lines = text.splitn(4, '\n');
        let number = |s: Option<&str>| s?.parse::<usize>().ok();
        match lines.next()? {
            "running" => Some(State::Running {
                next: number(lines.next())?,
            }),
            "compensating" => Some(State::Compensating {
                left: number(lines.next())?,
                failed: lines.next()?.to_string(),
                error: lines.next().unwrap_or_default().to_string(),
            }),
            "committed" => Some(State::Committed),
            "compensated" => {
                let mut rest = text.splitn(3, '\n').skip(1);
                Some(State::Compensated {
                    failed: rest.next()?.to_string(),
                    error: rest.next().unwrap_or_default().to_string(),
                })
            }
            _ => None,
        }
    }
}

/// A saga identified by its key prefix.
#[derive(Debug, Clone)]
pub struct Saga {
    client: Client,
    log: Bytes,
}

impl Saga {
    /// The saga whose log is `<name>/log`.
    pub fn new(client: Client, name: &str) -> Saga {
        Saga {
            client,
            log: Bytes::from(format!("{}log", dir(name))),
        }
    }

    /// Runs (or resumes) the saga with `steps` until it is committed or compensated. A saga
    /// that already ended answers its outcome without running anything.
    pub async fn run(&self, steps: &[Step]) -> Result<Outcome> {
        let (mut state, mut revision) = self.read().await?;
        loop {
            let next = match &state {
                State::Committed => return Ok(Outcome::Committed),
                State::Compensated { failed, error } => {
                    return Ok(Outcome::Compensated {
                        failed_step: failed.clone(),
                        error: error.clone(),
                    });
                }
                State::Running { next } if *next >= steps.len() => State::Committed,
                State::Running { next } => match (steps[*next].action)().await {
                    Ok(()) => State::Running { next: next + 1 },
                    Err(error) => State::Compensating {
                        left: *next,
                        failed: steps[*next].name.clone(),
                        error,
                    },
                },
                State::Compensating {
                    left: 0,
                    failed,
                    error,
                } => State::Compensated {
                    failed: failed.clone(),
                    error: error.clone(),
                },
                State::Compensating {
                    left,
                    failed,
                    error,
                } => {
                    let step = &steps[left - 1];
                    if let Err(why) = (step.compensation)().await {
                        // A compensation must eventually succeed: the log stays where it is
                        // and the caller (or a later coordinator) tries again.
                        return Err(Error::Recipe(format!(
                            "saga: compensation of {} failed: {why}",
                            step.name
                        )));
                    }
                    State::Compensating {
                        left: left - 1,
                        failed: failed.clone(),
                        error: error.clone(),
                    }
                }
            };
            revision = self.advance(revision, &next).await?;
            state = next;
        }
    }

    /// The log's state and its mod revision (0 before the saga started).
    async fn read(&self) -> Result<(State, i64)> {
        let now = self.client.get(&self.log, GetOptions::default()).await?;
        let Some(kv) = now.kvs.first() else {
            return Ok((State::Running { next: 0 }, 0));
        };
        let text = String::from_utf8_lossy(&kv.value);
        let state = State::decode(&text)
            .ok_or_else(|| Error::Recipe(format!("saga: the log says {text:?}")))?;
        Ok((state, kv.mod_revision))
    }

    /// Records `state` if the log is still at `revision`; returns the new revision.
    async fn advance(&self, revision: i64, state: &State) -> Result<i64> {
        let txn = Txn::new()
            .when([Compare::mod_revision(&self.log, Cmp::Equal, revision)])
            .and_then([Op::put(&self.log, state.encode(), PutOptions::default())]);
        let response = self.client.txn(txn).await?;
        if !response.succeeded {
            return Err(Error::Recipe(
                "saga: another coordinator moved the log; stopping".to_string(),
            ));
        }
        Ok(response.header.as_ref().map_or(0, |h| h.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every state reads back as written. Method: one of each, with awkward text.
    #[test]
    fn log_states_round_trip() {
        let states = [
            State::Running { next: 0 },
            State::Running { next: 7 },
            State::Compensating {
                left: 2,
                failed: "charge".into(),
                error: "declined\nby the bank".into(),
            },
            State::Committed,
            State::Compensated {
                failed: "ship".into(),
                error: String::new(),
            },
        ];
        for state in states {
            assert_eq!(State::decode(&state.encode()), Some(state));
        }
        assert_eq!(State::decode("nonsense"), None);
    }
}
