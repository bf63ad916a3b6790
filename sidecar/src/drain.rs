//! Graceful drain: the listeners stop accepting when shutdown begins, every accepted connection
//! holds a guard, and shutdown waits until the guards are gone or the drain deadline passes.

use std::time::Duration;

use tokio::sync::watch;

/// Counts connections in flight and carries the "shutting down" signal.
#[derive(Clone)]
pub struct Drain {
    shutdown: watch::Receiver<bool>,
    active: watch::Sender<usize>,
}

/// Held by one connection; dropping it marks the connection finished.
pub struct ConnectionGuard {
    active: watch::Sender<usize>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drain {
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            shutdown,
            active: watch::Sender::new(0),
        }
    }

    pub fn track(&self) -> ConnectionGuard {
        self.active.send_modify(|n| *n += 1);
        ConnectionGuard {
            active: self.active.clone(),
        }
    }

    pub fn active(&self) -> usize {
        *self.active.borrow()
    }

    /// The shutdown signal (listeners stop accepting when it turns true).
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Waits until no connection is in flight or `deadline` passed; returns how many were left.
    pub async fn wait_idle(&self, deadline: Duration) -> usize {
        let mut rx = self.active.subscribe();
        let _ = tokio::time::timeout(deadline, rx.wait_for(|n| *n == 0)).await;
        self.active()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_connections_up_to_the_deadline() {
        let (_tx, rx) = watch::channel(false);
        let drain = Drain::new(rx);
        assert_eq!(drain.wait_idle(Duration::from_secs(5)).await, 0);

        let quick = drain.track();
        let slow = drain.track();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(quick);
        });
        let started = tokio::time::Instant::now();
        assert_eq!(
            drain.wait_idle(Duration::from_secs(5)).await,
            1,
            "one is cut"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(slow);
        assert_eq!(drain.active(), 0);

        let last = drain.track();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(last);
        });
        let started = tokio::time::Instant::now();
        assert_eq!(drain.wait_idle(Duration::from_secs(5)).await, 0);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "returns as soon as the last one finished"
        );
    }
}
