//! The sinks: where the writer delivers records. [`parquet`] commits files by rename under the
//! log directory; [`kafka`] produces to a topic and waits for the broker's acknowledgement.
//!
//! # Contract
//! A sink implements [`Sink`]: it buffers records, hands back the batches that are due, delivers
//! a batch durably, and replays spool segments. Everything around it (the queue, the spool, the
//! down/up state, the observer) belongs to the writer, which drives a sink through this trait
//! only; this is why a sink never names the writer, and why the timing both sides share
//! ([`RETRY_INTERVAL`], [`TICK`]) is defined here.
//!
//! # Failure
//! A delivery or replay that fails returns the reason as `Err`, having made nothing durable that
//! a retry would duplicate, except where a sink documents otherwise (Kafka is at-least-once). A
//! sink does not retry or spool by itself: the writer spools the batch and tries the sink again
//! after [`RETRY_INTERVAL`].

pub mod kafka;
pub(crate) mod parquet;

use std::{sync::Arc, time::Duration};

use crate::{record::Record, schema::LogSchema, spool::SpooledRecords};

/// How long after a sink failure the writer tries the sink again.
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the writer checks for batches due by time and for a spool to replay; a sink that
/// lingers less (Kafka's `linger`) asks for a shorter tick through [`Sink::tick`].
pub(crate) const TICK: Duration = Duration::from_millis(200);

/// One kind of sink: where the writer delivers records. The writer owns everything around it
/// (the queue, the spool, the down/up state, the observer); a sink buffers, delivers durably,
/// and replays spool segments. Every method runs on the writer's own thread and runtime.
pub(crate) trait Sink {
    /// What the sink delivers at once: a file's records, a produce batch.
    type Batch: Batch;
    /// How often the writer asks for batches due by time.
    fn tick(&self) -> Duration {
        TICK
    }
    /// Buffers one record; returns a batch it made due (a full file or batch).
    fn push(&mut self, schema: &Arc<LogSchema>, record: Record) -> Option<Self::Batch>;
    /// Takes the batches due by time, or every buffered record if `all`.
    fn take_due(&mut self, all: bool) -> Vec<Self::Batch>;
    /// Delivers a batch: `Ok` only once it is durable (file committed, broker acknowledged).
    async fn deliver(&mut self, batch: &Self::Batch) -> Result<(), String>;
    /// Delivers a spool segment's records (named by `segment`, the segment's file stem),
    /// calling `written(feature_service, records)` as parts of it are delivered; `Ok` once all
    /// of it is, when the segment may be removed.
    async fn replay(
        &mut self,
        segment: &str,
        records: SpooledRecords,
        written: &mut dyn FnMut(&str, u64),
    ) -> Result<(), String>;
}

/// The records of a batch, by schema, for the spool and the observer.
pub(crate) trait Batch {
    /// Each schema's records.
    fn groups(&self) -> Vec<(&LogSchema, &[Record])>;
}

/// What the tests of the sinks and of the spool share.
#[cfg(test)]
pub(crate) mod tests {
    use fetcher_api::FeatureType;

    use crate::{
        PiiMode,
        schema::{Column, FeatureColumn, LogSchema, SchemaDef},
    };

    /// A schema with one feature of every type, a string entity and a double context value.
    pub(crate) fn schema() -> LogSchema {
        let f = |name: &str, ty| FeatureColumn {
            name: name.into(),
            ty,
            pii: false,
        };
        LogSchema::new(SchemaDef {
            feature_service: "fs/1".into(),
            definition_hash: "abc".into(),
            entities: vec![Column {
                name: "user_id".into(),
                ty: FeatureType::String,
                pii: false,
            }],
            context: vec![Column {
                name: "amount".into(),
                ty: FeatureType::Double,
                pii: false,
            }],
            features: FeatureType::ALL
                .iter()
                .map(|ty| f(&format!("v:{}", ty.name()), *ty))
                .collect(),
            pii: PiiMode::Hash,
            inputs: Vec::new(),
        })
    }
}
