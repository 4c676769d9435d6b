//! How a fetch fails.
//!
//! A fetcher classifies each failure; the gateway's layers decide what to do about it (retry it,
//! count it against the circuit breaker, report it as `TIMED_OUT` or `SOURCE_ERROR`).

use std::fmt;

/// The class of a fetch failure. The set is small and closed so it can label metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The source did not answer in time.
    Timeout,
    /// The source could not be reached or answered with a transient server error.
    Unavailable,
    /// The source refused the call because of a rate limit.
    RateLimited,
    /// The source answered with something that is not what its contract says.
    InvalidResponse,
    /// The source rejected the call as such (bad credentials, bad request): retrying cannot help.
    Rejected,
    /// The gateway's own bound on calls in flight to this source refused the call.
    Overloaded,
    /// The source's circuit breaker is open after repeated failures: the call was not made.
    CircuitOpen,
    /// Anything else, including a bug in the fetcher.
    Internal,
}

impl ErrorClass {
    /// Every class, in declaration order (`class as usize` indexes it).
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::Timeout,
        ErrorClass::Unavailable,
        ErrorClass::RateLimited,
        ErrorClass::InvalidResponse,
        ErrorClass::Rejected,
        ErrorClass::Overloaded,
        ErrorClass::CircuitOpen,
        ErrorClass::Internal,
    ];

    /// A short lowercase name, used as a metric label and in per-feature metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::InvalidResponse => "invalid_response",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::CircuitOpen => "circuit_open",
            ErrorClass::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed fetch of a whole batch. A failure of one value in a row is a [`crate::CellError`]
/// instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct FetchError {
    class: ErrorClass,
    retryable: bool,
    message: String,
}

impl FetchError {
    /// A failure of the given class; retryable as the class usually is (timeouts and unavailable
    /// sources are, everything else is not). Use [`FetchError::with_retryable`] to override.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        let retryable = matches!(class, ErrorClass::Timeout | ErrorClass::Unavailable);
        FetchError {
            class,
            retryable,
            message: message.into(),
        }
    }

    /// The source did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Timeout, message)
    }

    /// The source is unreachable or failed transiently; retryable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unavailable, message)
    }

    /// The source is rate limiting us; not retried inside a request.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::RateLimited, message)
    }

    /// The source answered outside its contract.
    pub fn invalid_response(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::InvalidResponse, message)
    }

    /// The source rejected the call; retrying cannot help.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Rejected, message)
    }

    /// Anything else.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Internal, message)
    }

    /// Overrides whether the failure is worth retrying (e.g. a 400 that the API documents as
    /// transient).
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The class of the failure.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Whether the same call may succeed if made again soon.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// The human-readable detail. Never contains secrets: fetchers must not put credentials in it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_indexed_by_discriminant() {
        for (i, class) in ErrorClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
    }

    #[test]
    fn retryable_follows_class_unless_overridden() {
        assert!(FetchError::timeout("t").retryable());
        assert!(FetchError::unavailable("u").retryable());
        assert!(!FetchError::rate_limited("r").retryable());
        assert!(!FetchError::rejected("r").retryable());
        assert!(
            FetchError::rejected("institution down")
                .with_retryable(true)
                .retryable()
        );
        assert_eq!(
            FetchError::invalid_response("bad json").to_string(),
            "invalid_response: bad json"
        );
    }
}
