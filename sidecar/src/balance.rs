//! Client-side load balancing over a Service's endpoints (what Linkerd and Istio's sidecars do):
//! **power of two choices over least in-flight** — pick two endpoints at random and take the one
//! with fewer requests (HTTP/2) or connections (anything else) in flight. It needs no shared
//! counter between sidecars, never sends to the busiest of several endpoints, and unlike round
//! robin it moves load away from a slow endpoint on its own. An endpoint whose connect just
//! failed is passed over for [`EJECT_FOR`] (unless every candidate failed), and one connection or
//! request tries at most [`MAX_ATTEMPTS`] distinct endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::discovery::Endpoint;

/// How long an endpoint whose connect failed is passed over.
pub const EJECT_FOR: Duration = Duration::from_secs(5);
/// Distinct endpoints one connection (or HTTP/2 request) tries before giving up.
pub const MAX_ATTEMPTS: usize = 3;
/// Load entries kept for endpoints; idle ones are forgotten beyond this (endpoints come and go).
const MAX_TRACKED: usize = 4096;

#[derive(Default)]
struct Load {
    in_flight: Arc<AtomicUsize>,
    failed_until: Option<Instant>,
}

/// Per-endpoint load and connect failures, shared by every outbound connection of the sidecar.
#[derive(Default)]
pub struct Balancer {
    loads: Mutex<HashMap<SocketAddr, Load>>,
}

/// Counts one request or connection in flight to an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Load>> {
        self.loads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks an endpoint among `candidates` that is not in `tried`, or `None` when none is left.
    pub fn pick<'a>(
        &self,
        candidates: &'a [Endpoint],
        tried: &[SocketAddr],
    ) -> Option<&'a Endpoint> {
        self.pick_with(candidates, tried, |n| rand::random_range(0..n))
    }

    /// [`Balancer::pick`] with the random source given (`random(n)` is in `0..n`).
    pub fn pick_with<'a>(
        &self,
        candidates: &'a [Endpoint],
        tried: &[SocketAddr],
        mut random: impl FnMut(usize) -> usize,
    ) -> Option<&'a Endpoint> {
        let now = Instant::now();
        let loads = self.lock();
        let untried: Vec<&Endpoint> = candidates
            .iter()
            .filter(|e| !tried.contains(&e.addr))
            .collect();
        let healthy: Vec<&Endpoint> = untried
            .iter()
            .copied()
            .filter(|e| {
                loads
                    .get(&e.addr)
                    .and_then(|l| l.failed_until)
                    .is_none_or(|until| until <= now)
            })
            .collect();
        // Every candidate failed recently: try them anyway (one may be back) rather than none.
        let pool = if healthy.is_empty() { untried } else { healthy };
        let in_flight = |e: &Endpoint| {
            loads
                .get(&e.addr)
                .map_or(0, |l| l.in_flight.load(Ordering::Relaxed))
        };
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => {
                let a = random(n);
                let b = (a + 1 + random(n - 1)) % n; // a different one
                let (ea, eb) = (pool[a], pool[b]);
                Some(if in_flight(eb) < in_flight(ea) {
                    eb
                } else {
                    ea
                })
            }
        }
    }

    /// Counts a request or connection to `addr` as in flight until the guard is dropped.
    pub fn start(&self, addr: SocketAddr) -> InFlight {
        let mut loads = self.lock();
        if loads.len() >= MAX_TRACKED && !loads.contains_key(&addr) {
            let now = Instant::now();
            loads.retain(|_, l| {
                l.in_flight.load(Ordering::Relaxed) > 0
                    || l.failed_until.is_some_and(|until| until > now)
            });
        }
        let counter = loads.entry(addr).or_default().in_flight.clone();
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }

    /// A connect to `addr` failed: pass it over for [`EJECT_FOR`].
    pub fn failed(&self, addr: SocketAddr) {
        self.lock().entry(addr).or_default().failed_until = Some(Instant::now() + EJECT_FOR);
    }

    /// A connect to `addr` succeeded: it is eligible again at once.
    pub fn succeeded(&self, addr: SocketAddr) {
        if let Some(l) = self.lock().get_mut(&addr) {
            l.failed_until = None;
        }
    }

    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.lock()
            .get(&addr)
            .map_or(0, |l| l.in_flight.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
