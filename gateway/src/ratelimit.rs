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
    requests: u32,
    period: Duration,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// What a bucket holds after a request was admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Whole requests left now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub full_in: u64,
}

impl Limiter {
    /// `requests` per `period`, at most `burst` at once.
    pub fn new(requests: u32, period: Duration, burst: u32) -> Self {
        Limiter {
            capacity: f64::from(burst.max(1)),
            per_second: f64::from(requests) / period.as_secs_f64().max(0.001),
            requests,
            period,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The `RateLimit-Policy` value (draft-ietf-httpapi-ratelimit-headers): `name` allows
    /// `requests` per `period` seconds.
    pub fn policy_header(&self, name: &str) -> String {
        format!(
            "\"{name}\";q={};w={}",
            self.requests,
            self.period.as_secs().max(1)
        )
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

    /// Takes one token for `key`: what is left, or `Err(retry_after)` when the bucket is empty.
    pub fn take(&self, key: &str) -> Result<Quota, Duration> {
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
            Ok(Quota {
                remaining: tokens.floor() as u64,
                full_in: ((self.capacity - *tokens) / self.per_second).ceil() as u64,
            })
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
        for left in [2, 1, 0] {
            assert_eq!(l.take("a").unwrap().remaining, left);
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
    async fn the_quota_says_what_is_left_and_when_the_bucket_is_full() {
        let l = Limiter::new(10, Duration::from_secs(60), 5);
        assert_eq!(l.policy_header("clientId"), "\"clientId\";q=10;w=60");
        assert_eq!(
            l.take("a").unwrap(),
            Quota {
                remaining: 4,
                full_in: 6
            }
        );
        l.take("a").unwrap();
        assert_eq!(l.take("a").unwrap().full_in, 18);
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
