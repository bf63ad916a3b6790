//! Token buckets per route and key (client_id, sub, a claim or the source IP). Per replica: N
//! gateway replicas admit up to N times the configured rate (docs/gateway.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Keys kept per route before full buckets are dropped (a full bucket is the same as none).
const MAX_KEYS: usize = 100_000;

pub struct Limiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    /// `requests` per `period`, at most `burst` at once.
    pub fn new(requests: u32, period: Duration, burst: u32) -> Self {
        Limiter {
            capacity: f64::from(burst.max(1)),
            per_second: f64::from(requests) / period.as_secs_f64().max(0.001),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has a token left, without taking it; `Err(retry_after)` when empty.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tokens, at)) = buckets.get(key) else {
            return Ok(());
        };
        let tokens =
            (tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.capacity);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    /// Takes one token for `key`; `Err(retry_after)` when the bucket is empty.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (capacity, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < capacity
            });
        }
        let (tokens, at) = buckets
            .entry(key.to_owned())
            .or_insert((self.capacity, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refuses_past_its_burst_and_refills_at_the_rate() {
        let l = Limiter::new(2, Duration::from_secs(1), 3);
        for _ in 0..3 {
            assert!(l.take("a").is_ok());
        }
        let wait = l.take("a").unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(l.take("b").is_ok(), "another key has its own bucket");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn check_does_not_take() {
        let l = Limiter::new(1, Duration::from_secs(1), 1);
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.take("a").is_ok());
        assert!(l.check("a").is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.check("a").is_ok());
    }
}
