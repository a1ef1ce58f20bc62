//! Backoff between attempts of a failed node: exponential, capped, jittered.
//!
//! The jitter sample is an argument so that the rule is a pure function; the worker draws it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long to wait before the next attempt of a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Delay before the second attempt, in milliseconds.
    pub base_ms: u64,
    /// Multiplier applied per further attempt.
    pub factor: f64,
    /// Upper bound of any delay, in milliseconds, before jitter.
    pub cap_ms: u64,
    /// Fraction of the delay, in `0.0..=1.0`, that jitter may take away.
    pub jitter: f64,
}

/// Delay before the second attempt unless the spec says otherwise.
pub const BASE_MS_DEFAULT: u64 = 1_000;
/// Growth per attempt unless the spec says otherwise.
pub const FACTOR_DEFAULT: f64 = 2.0;
/// Longest delay unless the spec says otherwise: five minutes.
pub const CAP_MS_DEFAULT: u64 = 300_000;
/// Jitter fraction unless the spec says otherwise.
pub const JITTER_DEFAULT: f64 = 0.2;

impl Default for Policy {
    fn default() -> Self {
        Self {
            base_ms: BASE_MS_DEFAULT,
            factor: FACTOR_DEFAULT,
            cap_ms: CAP_MS_DEFAULT,
            jitter: JITTER_DEFAULT,
        }
    }
}

/// The delay after failed attempt number `attempt` (1-based), given a jitter sample in `0.0..=1.0`.
///
/// `min(cap, base * factor^(attempt-1))`, then reduced by up to `jitter` of itself. Jitter only
/// shortens the delay, so `cap_ms` stays a true upper bound.
pub fn next_delay(policy: &Policy, attempt: u32, jitter_sample: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(1_000) as i32;
    let raw = policy.base_ms as f64 * policy.factor.powi(exponent);
    let capped = if raw.is_finite() {
        raw.min(policy.cap_ms as f64)
    } else {
        policy.cap_ms as f64
    };
    let sample = jitter_sample.clamp(0.0, 1.0);
    let jittered = capped * (1.0 - policy.jitter.clamp(0.0, 1.0) * sample);
    Duration::from_millis(jittered.round() as u64)
}

/// The delay after failed attempt number `attempt` when the failure may have asked for one
/// (`asked`, an HTTP `Retry-After`, say): the delay asked, capped by `cap_ms` (a server cannot
/// park a node longer than its author allowed) and without jitter (it asked for that instant);
/// else [`next_delay`].
pub fn delay_after_failure(
    policy: &Policy,
    attempt: u32,
    jitter_sample: f64,
    asked: Option<Duration>,
) -> Duration {
    match asked {
        Some(asked) => asked.min(Duration::from_millis(policy.cap_ms)),
        None => next_delay(policy, attempt, jitter_sample),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base_ms: u64, factor: f64, cap_ms: u64, jitter: f64) -> Policy {
        Policy {
            base_ms,
            factor,
            cap_ms,
            jitter,
        }
    }

    fn check(p: Policy, attempt: u32, sample: f64, want_ms: u64) {
        assert_eq!(
            next_delay(&p, attempt, sample),
            Duration::from_millis(want_ms),
            "{p:?} attempt {attempt} sample {sample}"
        );
    }

    #[test]
    fn grows_exponentially_until_the_cap() {
        let p = policy(100, 2.0, 1_000, 0.0);
        check(p, 1, 0.5, 100);
        check(p, 2, 0.5, 200);
        check(p, 3, 0.5, 400);
        check(p, 4, 0.5, 800);
        check(p, 5, 0.5, 1_000);
        check(p, 60, 0.5, 1_000);
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        check(policy(100, 10.0, 5_000, 0.0), u32::MAX, 0.0, 5_000);
    }

    #[test]
    fn jitter_only_shortens() {
        let p = policy(1_000, 1.0, 1_000, 0.5);
        check(p, 1, 0.0, 1_000);
        check(p, 1, 1.0, 500);
        check(p, 1, 0.5, 750);
        // Samples outside 0..=1 are clamped rather than lengthening the delay.
        check(p, 1, -3.0, 1_000);
        check(p, 1, 7.0, 500);
    }

    #[test]
    fn attempt_zero_is_treated_as_the_first() {
        check(policy(300, 3.0, 10_000, 0.0), 0, 0.0, 300);
    }

    #[test]
    fn an_asked_delay_wins_up_to_the_cap_and_takes_no_jitter() {
        let p = policy(1_000, 2.0, 60_000, 0.5);
        let after = |asked: Option<u64>, sample| {
            delay_after_failure(&p, 3, sample, asked.map(Duration::from_millis))
        };
        assert_eq!(after(Some(7_000), 1.0), Duration::from_millis(7_000));
        assert_eq!(after(Some(0), 1.0), Duration::ZERO);
        assert_eq!(after(Some(3_600_000), 0.0), Duration::from_millis(60_000));
        assert_eq!(after(None, 1.0), next_delay(&p, 3, 1.0));
    }
}
