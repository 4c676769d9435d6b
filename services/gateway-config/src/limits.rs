//! `[limits]`: bounds on what one request may ask.

use std::time::Duration;

use serde::Deserialize;

/// `[limits]`: bounds on what one request may ask, each refused with INVALID_ARGUMENT.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct LimitsConfig {
    /// Most rows in one GetFeaturesBatch call.
    pub max_batch_rows: usize,
    /// Longest entity key or string context value, in bytes.
    pub max_key_bytes: usize,
    /// Most entity keys or context values in one row.
    pub max_entities_per_row: usize,
    /// Most explicit feature refs in one request.
    pub max_features_per_request: usize,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// Longest caller-chosen `request_id`, in bytes. A request id is printable ASCII without
    /// spaces (`!` to `~`), so it can be logged, echoed and joined to labels as it is.
    pub max_request_id_bytes: usize,
    /// Most GetFeatures / GetFeaturesBatch calls in flight at once; more are refused at once
    /// with RESOURCE_EXHAUSTED (load shedding) instead of queueing past their deadlines.
    /// Health and reflection are never refused. Default: 512 per CPU core.
    pub max_in_flight: Option<usize>,
    /// Longest deadline a feature service may have (a request never runs longer than its
    /// feature service's deadline, whatever its caller's timeout). Default 10s.
    #[serde(with = "duration_text")]
    pub max_deadline: Duration,
}

/// `max_deadline` as a duration string such as `"10s"`.
mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::problems::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch_rows: 1000,
            max_key_bytes: 256,
            max_entities_per_row: 64,
            max_features_per_request: 1000,
            max_message_bytes: 4 * 1024 * 1024,
            max_request_id_bytes: 128,
            max_in_flight: None,
            max_deadline: Duration::from_secs(10),
        }
    }
}
