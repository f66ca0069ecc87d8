//! When a failed attempt runs again: exponential backoff with jitter, our
//! own policy (apalis-redis would retry 25 times at `now + attempt` seconds,
//! whatever `max_attempts` says).

use std::time::Duration;

use rand::Rng as _;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based): a random
    /// 50–100 % of `base × 2^(attempt-1)`, capped at `max`. The jitter keeps
    /// a burst of failures from retrying in lock step.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let full = self.base.saturating_mul(1 << exponent).min(self.max);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = policy.delay(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = policy.delay(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            assert!(policy.delay(40) <= Duration::from_secs(1));
        }
    }
}
