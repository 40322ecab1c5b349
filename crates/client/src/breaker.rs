//! A circuit breaker per endpoint and a retry budget shared by the client.
//!
//! Both are plain state machines that take the current time as an argument, so their tests need
//! no clock and no network.

use std::time::{Duration, Instant};

/// Thresholds of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures_to_open: u32,
    /// How long an open circuit refuses requests before letting one trial through.
    pub open_for: Duration,
    /// Consecutive trial successes in half-open that close the circuit again.
    pub successes_to_close: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(2),
            successes_to_close: 1,
        }
    }
}

/// The three states of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; failures are counted.
    Closed,
    /// Requests are refused until the open period ends.
    Open,
    /// One trial request at a time decides whether to close or reopen.
    HalfOpen,
}

/// Closed → (failures_to_open consecutive failures) → Open → (open_for elapsed) → HalfOpen →
/// (successes_to_close trial successes) → Closed, or (one trial failure) → Open again.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    trial_successes: u32,
    trial_in_flight: bool,
    opened_at: Option<Instant>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            trial_successes: 0,
            trial_in_flight: false,
            opened_at: None,
        }
    }

    /// The state as of `now` (an open breaker whose period is over reports half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) if now >= at + self.config.open_for => {
                BreakerState::HalfOpen
            }
            (state, _) => state,
        }
    }

    /// Whether a request may go now. In half-open only one trial is let through at a time; the
    /// caller must report its result with [`on_success`](Self::on_success) or
    /// [`on_failure`](Self::on_failure).
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.state(now) == BreakerState::HalfOpen && self.state == BreakerState::Open {
            self.state = BreakerState::HalfOpen;
            self.trial_successes = 0;
            self.trial_in_flight = false;
        }
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.trial_in_flight => false,
            BreakerState::HalfOpen => {
                self.trial_in_flight = true;
                true
            }
        }
    }

    /// Whether a request could go now, without taking the half-open trial slot.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                !(self.state == BreakerState::HalfOpen && self.trial_in_flight)
            }
        }
    }

    /// Records a success.
    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        if self.state == BreakerState::HalfOpen {
            self.trial_in_flight = false;
            self.trial_successes += 1;
            if self.trial_successes >= self.config.successes_to_close {
                self.state = BreakerState::Closed;
                self.opened_at = None;
            }
        }
    }

    /// Records a failure at `now`.
    pub fn on_failure(&mut self, now: Instant) {
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.config.failures_to_open {
                    self.open(now);
                }
            }
            BreakerState::HalfOpen => self.open(now),
            // A late failure of a request let through before opening: restart the period.
            BreakerState::Open => self.opened_at = Some(now),
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.trial_in_flight = false;
        self.consecutive_failures = 0;
    }
}

/// A token bucket that bounds retries: each retry spends one token, each success refills a
/// fraction of one, up to a maximum. When a cluster is failing, successes stop, the bucket
/// empties and retries stop multiplying the load.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    tokens: f64,
    tokens_max: f64,
    refill_per_success: f64,
}

impl RetryBudget {
    /// A full bucket of `tokens_max` tokens, refilled by `refill_per_success` per success.
    pub fn new(tokens_max: u32, refill_per_success: f64) -> RetryBudget {
        RetryBudget {
            tokens: f64::from(tokens_max),
            tokens_max: f64::from(tokens_max),
            refill_per_success: refill_per_success.max(0.0),
        }
    }

    /// Takes one token for a retry; `false` when fewer than one is left.
    pub fn try_withdraw(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records a success.
    pub fn deposit(&mut self) {
        self.tokens = (self.tokens + self.refill_per_success).min(self.tokens_max);
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(10, 0.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(5),
            successes_to_close: 2,
        }
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_only() {
        // Goal: the circuit opens on N consecutive failures, and a success in between resets the
        // count. Method: fail, fail, succeed, fail, fail (still closed), fail (open).
        let now = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        breaker.on_failure(now);
        breaker.on_failure(now);
        breaker.on_success();
        breaker.on_failure(now);
        breaker.on_failure(now);
        assert_eq!(breaker.state(now), BreakerState::Closed);
        assert!(breaker.allow(now));
        breaker.on_failure(now);
        assert_eq!(breaker.state(now), BreakerState::Open);
        assert!(!breaker.allow(now + Duration::from_secs(4)));
    }

    #[test]
    fn breaker_half_open_lets_one_trial_and_closes_after_successes() {
        // Goal: after the open period one trial at a time passes; enough trial successes close
        // the circuit. Method: open it, advance past open_for, drive two trials.
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..3 {
            breaker.on_failure(start);
        }
        let later = start + Duration::from_secs(5);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert!(breaker.allow(later));
        assert!(
            !breaker.allow(later),
            "a second concurrent trial is refused"
        );
        breaker.on_success();
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert!(breaker.allow(later));
        breaker.on_success();
        assert_eq!(breaker.state(later), BreakerState::Closed);
        assert!(breaker.allow(later) && breaker.allow(later));
    }

    #[test]
    fn breaker_trial_failure_reopens() {
        // Goal: a failed trial reopens the circuit for a full period. Method: open, wait,
        // fail the trial, check refused until another open_for has passed.
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..3 {
            breaker.on_failure(start);
        }
        let trial = start + Duration::from_secs(6);
        assert!(breaker.allow(trial));
        breaker.on_failure(trial);
        assert_eq!(breaker.state(trial), BreakerState::Open);
        assert!(!breaker.allow(trial + Duration::from_secs(4)));
        assert!(breaker.allow(trial + Duration::from_secs(5)));
    }

    #[test]
    fn budget_spends_and_refills() {
        // Goal: retries spend tokens, successes refill them slowly, never above the maximum.
        // Method: a bucket of 2 refilled by 0.5 per success.
        let mut budget = RetryBudget::new(2, 0.5);
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        budget.deposit();
        assert!(!budget.try_withdraw(), "half a token is not enough");
        budget.deposit();
        assert!(budget.try_withdraw());
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(budget.tokens(), 2.0);
    }

    proptest! {
        #[test]
        fn budget_bounds_retries_by_successes(ops in proptest::collection::vec(any::<bool>(), 0..500)) {
            // Goal: retries never exceed the initial tokens plus refill * successes. Method:
            // random interleavings of successes (true) and retry attempts (false).
            let mut budget = RetryBudget::new(5, 0.2);
            let (mut successes, mut retries) = (0u32, 0u32);
            for op in ops {
                if op { budget.deposit(); successes += 1; }
                else if budget.try_withdraw() { retries += 1; }
                prop_assert!(budget.tokens() >= 0.0 && budget.tokens() <= 5.0);
            }
            prop_assert!(f64::from(retries) <= 5.0 + 0.2 * f64::from(successes) + 1e-9);
        }

        #[test]
        fn breaker_never_allows_when_open(fails in 0u32..10, offset_ms in 0u64..10_000) {
            // Goal: within the open period nothing passes; after it, exactly one trial does.
            // Method: random failure counts and probe times.
            let start = Instant::now();
            let mut breaker = CircuitBreaker::new(config());
            for _ in 0..fails { breaker.on_failure(start); }
            let at = start + Duration::from_millis(offset_ms);
            if fails >= 3 && offset_ms < 5_000 {
                prop_assert!(!breaker.allow(at));
            } else if fails >= 3 {
                prop_assert!(breaker.allow(at));
                prop_assert!(!breaker.allow(at));
            } else {
                prop_assert!(breaker.allow(at));
            }
        }
    }
}
