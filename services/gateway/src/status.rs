//! The status of a served feature (the wire's `FeatureStatus`), as the executor assigns it and
//! telemetry counts it. A leaf: it imports no other module.

/// Why a feature has the value it has (the wire's `FeatureStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Present,
    NotFound,
    NullValue,
    OutsideMaxAge,
    TimedOut,
    SourceError,
    Stale,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 7] = [
        Status::Present,
        Status::NotFound,
        Status::NullValue,
        Status::OutsideMaxAge,
        Status::TimedOut,
        Status::SourceError,
        Status::Stale,
    ];

    /// A lowercase name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Present => "present",
            Status::NotFound => "not_found",
            Status::NullValue => "null_value",
            Status::OutsideMaxAge => "outside_max_age",
            Status::TimedOut => "timed_out",
            Status::SourceError => "source_error",
            Status::Stale => "stale",
        }
    }
}
