//! The circuit breaker's state and the retries of one source.

use std::sync::Arc;

use metrics::{Counter, counter, gauge};

use super::names;

/// The circuit-breaker and retry metric handles of one source.
#[derive(Clone, Debug)]
pub struct ResilienceMetrics {
    source: Arc<str>,
    circuit: metrics::Gauge,
    retries: Counter,
    refused: Counter,
}

impl ResilienceMetrics {
    /// Registers the handles of `source`.
    pub fn new(source: &str) -> Self {
        ResilienceMetrics {
            source: source.into(),
            circuit: gauge!(names::CIRCUIT_STATE, "source" => source.to_owned()),
            retries: counter!(names::RETRIES, "source" => source.to_owned()),
            refused: counter!(names::RETRIES_REFUSED, "source" => source.to_owned()),
        }
    }

    /// The circuit changed state (0 closed, 1 open, 2 half-open).
    pub fn circuit(&self, state: u8) {
        self.circuit.set(f64::from(state));
        match state {
            1 => tracing::warn!(source = &*self.source, "circuit opened"),
            2 => tracing::info!(source = &*self.source, "circuit half-open: probing"),
            _ => tracing::debug!(source = &*self.source, "circuit closed"),
        }
    }

    /// A failed call is retried.
    pub fn retried(&self) {
        self.retries.increment(1);
    }

    /// A retry was refused by the budget.
    pub fn retry_refused(&self) {
        self.refused.increment(1);
    }
}
