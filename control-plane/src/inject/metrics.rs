//! `pqmesh_injections_total{outcome}`, registered on the control plane's one registry.

use prometheus::{IntCounterVec, Opts, Registry};

use super::Outcome;

#[derive(Clone, Debug)]
pub struct InjectMetrics {
    pub injections: IntCounterVec,
}

impl InjectMetrics {
    /// Registers the counter (the registry's `pqmesh` prefix makes it `pqmesh_injections_total`),
    /// with every outcome present at 0.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let injections = IntCounterVec::new(
            Opts::new(
                "injections_total",
                "Admission reviews answered by the injection webhook, by outcome (injected, \
                 skipped_*, refused: allowed=false, error: unreadable review answered with HTTP 400)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(injections.clone()))?;
        for label in Outcome::all_metric_labels().into_iter().chain(["error"]) {
            injections.with_label_values(&[label]);
        }
        Ok(Self { injections })
    }

    pub fn record(&self, outcome: &str) {
        self.injections.with_label_values(&[outcome]).inc();
    }
}
