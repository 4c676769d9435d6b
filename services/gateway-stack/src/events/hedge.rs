//! Hedged attempts of one source: sent, won, skipped by reason.

use metrics::{Counter, counter};

use super::names;

/// The hedging metric handles of one source.
#[derive(Clone, Debug)]
pub struct HedgeMetrics {
    sent: Counter,
    won: Counter,
    refused: Counter,
    late: Counter,
}

impl HedgeMetrics {
    /// Registers the handles of `source`.
    pub fn new(source: &str) -> Self {
        HedgeMetrics {
            sent: counter!(names::HEDGES, "source" => source.to_owned()),
            won: counter!(names::HEDGES_WON, "source" => source.to_owned()),
            refused: counter!(names::HEDGES_SKIPPED, "source" => source.to_owned(), "reason" => "budget"),
            late: counter!(names::HEDGES_SKIPPED, "source" => source.to_owned(), "reason" => "deadline"),
        }
    }

    /// A hedged attempt was sent.
    pub fn sent(&self) {
        self.sent.increment(1);
    }

    /// A hedged attempt answered first.
    pub fn won(&self) {
        self.won.increment(1);
    }

    /// A hedge was not sent: the budget was spent.
    pub fn refused(&self) {
        self.refused.increment(1);
    }

    /// A hedge was not sent: too little of the deadline was left.
    pub fn skipped_deadline(&self) {
        self.late.increment(1);
    }
}
