//! Both directions of `fetcher.proto`: rows to and from the wire, and the one table between
//! [`FetchError`] and gRPC status codes. The client ([`crate::SidecarFetcher`]) and the host
//! (`services/fetcher-sidecar`) share it, so the two ends cannot drift apart.
//!
//! # Errors on the wire
//! The code carries the class, as the proto says: UNAVAILABLE, DEADLINE_EXCEEDED and
//! RESOURCE_EXHAUSTED are retryable, every other code is not. A sidecar in any language needs no
//! more. Our own host also sends the exact class and retryability as response metadata
//! ([`ERROR_CLASS_METADATA`], [`RETRYABLE_METADATA`]), so e.g. a Plaid `rejected` error that the
//! Plaid fetcher marks retryable stays both through the hop; the client prefers them when present.
//!
//! Messages cross the wire as they are: fetchers never put secrets in them (see
//! [`FetchError::message`]). The client bounds their length, since they come from another
//! process.

use std::{error::Error as _, time::SystemTime};

use fetcher_api::{
    Cell, CellError, EntityKey, ErrorClass, FetchError, KeyPart, Record, Row, Value,
};
use proto::v1;
use tonic::{Code, Status};

/// Response metadata naming the [`ErrorClass`] of a failed fetch (`timeout`, `rejected`, ...).
pub const ERROR_CLASS_METADATA: &str = "fg-error-class";
/// Response metadata saying whether a failed fetch may be retried (`true` or `false`).
pub const RETRYABLE_METADATA: &str = "fg-retryable";

/// Longest sidecar message kept in a [`FetchError`] (it ends up in logs and metadata).
const MAX_MESSAGE: usize = 300;

/// The gRPC code of an error class.
pub fn code_of(class: ErrorClass) -> Code {
    match class {
        ErrorClass::Timeout => Code::DeadlineExceeded,
        ErrorClass::Unavailable | ErrorClass::CircuitOpen => Code::Unavailable,
        ErrorClass::RateLimited | ErrorClass::Overloaded => Code::ResourceExhausted,
        ErrorClass::Rejected => Code::FailedPrecondition,
        ErrorClass::InvalidResponse | ErrorClass::Internal => Code::Internal,
    }
}

/// A failed fetch as a gRPC status, with the class and retryability as metadata.
pub fn status_from_fetch_error(error: &FetchError) -> Status {
    let mut status = Status::new(code_of(error.class()), error.message());
    let metadata = status.metadata_mut();
    metadata.insert(
        ERROR_CLASS_METADATA,
        tonic::metadata::MetadataValue::from_static(error.class().as_str()),
    );
    metadata.insert(
        RETRYABLE_METADATA,
        tonic::metadata::MetadataValue::from_static(if error.retryable() {
            "true"
        } else {
            "false"
        }),
    );
    status
}

/// A sidecar's gRPC error as a [`FetchError`]. `target` names the sidecar in the message;
/// `deadline_passed` tells a local deadline expiry (which tonic reports as CANCELLED) from a
/// cancellation by the sidecar.
pub fn fetch_error_from_status(status: &Status, target: &str, deadline_passed: bool) -> FetchError {
    let code = status.code();
    let (class, retryable) = match code {
        Code::Unavailable => (ErrorClass::Unavailable, true),
        Code::DeadlineExceeded => (ErrorClass::Timeout, true),
        Code::Cancelled if deadline_passed => (ErrorClass::Timeout, true),
        // The call failed on our side of the hop, not with an answer of the sidecar (tonic keeps
        // the transport's error as the status's source): the connection went away under the
        // call, as when the sidecar crashed. It may be made again, on a new connection.
        Code::Cancelled | Code::Unknown if status.source().is_some() => {
            (ErrorClass::Unavailable, true)
        }
        // Cancelled by the sidecar (e.g. it is shutting down): a transient failure.
        Code::Cancelled => (ErrorClass::Unavailable, false),
        Code::ResourceExhausted => (ErrorClass::RateLimited, true),
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Unauthenticated => (ErrorClass::Rejected, false),
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => (ErrorClass::Internal, false),
    };
    let metadata = status.metadata();
    let class = metadata
        .get(ERROR_CLASS_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|name| ErrorClass::ALL.into_iter().find(|c| c.as_str() == name))
        .unwrap_or(class);
    let retryable = match metadata
        .get(RETRYABLE_METADATA)
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => true,
        Some("false") => false,
        _ => retryable,
    };
    let message = format!(
        "sidecar {target}: {}: {}",
        code.description(),
        truncate(status.message(), MAX_MESSAGE)
    );
    FetchError::new(class, message).with_retryable(retryable)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An entity key on the wire.
pub fn key_to_wire(key: EntityKey) -> v1::EntityKey {
    v1::EntityKey {
        parts: key.into_iter().map(v1::Value::from).collect(),
    }
}

/// A wire key part as an entity key part, if it is an int64 or a string.
pub fn key_part_from_wire(value: v1::Value) -> Option<KeyPart> {
    Value::from(value).to_key_part()
}

/// A row on the wire.
pub fn row_to_wire(row: Row) -> v1::Row {
    match row {
        Row::NotFound => v1::Row {
            found: false,
            cells: Vec::new(),
            event_time: None,
        },
        Row::Found(record) => v1::Row {
            found: true,
            cells: record
                .cells
                .into_iter()
                .map(|cell| v1::Cell {
                    result: Some(match cell {
                        Ok(value) => v1::cell::Result::Value(value.into()),
                        Err(CellError(message)) => v1::cell::Result::Error(message),
                    }),
                })
                .collect(),
            event_time: record.event_time.map(proto::timestamp_to_wire),
        },
    }
}

/// A wire row as a [`Row`], checking it has one cell per requested feature. A cell with an
/// error, or with neither a value nor an error, becomes a [`CellError`]; the gateway type-checks
/// the values against the view afterwards.
pub fn row_from_wire(row: v1::Row, features: usize) -> Result<Row, String> {
    if !row.found {
        return Ok(Row::NotFound);
    }
    if row.cells.len() != features {
        return Err(format!(
            "a row has {} cells for {features} features",
            row.cells.len()
        ));
    }
    let cells = row
        .cells
        .into_iter()
        .map(|cell| -> Cell {
            match cell.result {
                Some(v1::cell::Result::Value(value)) => Ok(value.into()),
                Some(v1::cell::Result::Error(message)) => {
                    Err(CellError(truncate(&message, MAX_MESSAGE).to_owned()))
                }
                None => Err(CellError("the sidecar sent an empty cell".to_owned())),
            }
        })
        .collect();
    let event_time: Option<SystemTime> = row.event_time.as_ref().map(proto::timestamp_from_wire);
    Ok(Row::Found(Record { cells, event_time }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_call_cut_off_by_the_transport_is_unavailable_and_retryable() {
        // What tonic makes of a connection that broke under the call: UNKNOWN, with the cause.
        let cut = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(cut.code(), Code::Unknown);
        let error = fetch_error_from_status(&cut, "http://127.0.0.1:1", false);
        assert_eq!(
            (error.class(), error.retryable()),
            (ErrorClass::Unavailable, true)
        );
        // The same code as the sidecar's own answer is its failure, not the transport's.
        let answered =
            fetch_error_from_status(&Status::unknown("boom"), "http://127.0.0.1:1", false);
        assert_eq!(
            (answered.class(), answered.retryable()),
            (ErrorClass::Internal, false)
        );
    }

    #[test]
    fn every_class_survives_the_hop_with_its_retryability() {
        for class in ErrorClass::ALL {
            for retryable in [true, false] {
                let error = FetchError::new(class, "boom").with_retryable(retryable);
                let status = status_from_fetch_error(&error);
                let back = fetch_error_from_status(&status, "unix:/s.sock", false);
                assert_eq!(back.class(), class);
                assert_eq!(back.retryable(), retryable, "{class}");
                assert!(back.message().contains("boom"), "{}", back.message());
                assert!(back.message().contains("unix:/s.sock"));
            }
        }
    }

    #[test]
    fn codes_alone_follow_the_proto() {
        let cases = [
            (Code::Unavailable, ErrorClass::Unavailable, true),
            (Code::DeadlineExceeded, ErrorClass::Timeout, true),
            (Code::ResourceExhausted, ErrorClass::RateLimited, true),
            (Code::NotFound, ErrorClass::Rejected, false),
            (Code::InvalidArgument, ErrorClass::Rejected, false),
            (Code::FailedPrecondition, ErrorClass::Rejected, false),
            (Code::Internal, ErrorClass::Internal, false),
            (Code::Unknown, ErrorClass::Internal, false),
        ];
        for (code, class, retryable) in cases {
            let error = fetch_error_from_status(&Status::new(code, "m"), "t", false);
            assert_eq!(
                (error.class(), error.retryable()),
                (class, retryable),
                "{code:?}"
            );
        }
        // tonic reports its own deadline expiry as CANCELLED.
        let cancelled = Status::cancelled("Timeout expired");
        assert_eq!(
            fetch_error_from_status(&cancelled, "t", true).class(),
            ErrorClass::Timeout
        );
        assert_eq!(
            fetch_error_from_status(&cancelled, "t", false).class(),
            ErrorClass::Unavailable
        );
        // Unknown metadata values fall back to the code.
        let mut status = Status::unavailable("m");
        status.metadata_mut().insert(
            ERROR_CLASS_METADATA,
            tonic::metadata::MetadataValue::from_static("weird"),
        );
        assert_eq!(
            fetch_error_from_status(&status, "t", false).class(),
            ErrorClass::Unavailable
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let status = Status::internal("x".repeat(10_000));
        let error = fetch_error_from_status(&status, "t", false);
        assert!(error.message().len() < 400);
    }

    #[test]
    fn rows_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let rows = [
            Row::NotFound,
            Row::Found(Record {
                cells: vec![
                    Ok(Value::Double(0.5)),
                    Err(CellError("expected int64, got string".into())),
                    Ok(Value::Null),
                ],
                event_time: Some(t),
            }),
        ];
        for row in rows {
            assert_eq!(row_from_wire(row_to_wire(row.clone()), 3), Ok(row));
        }
    }

    #[test]
    fn wrong_cell_counts_and_empty_cells() {
        let row = row_to_wire(Row::Found(Record {
            cells: vec![Ok(Value::Int64(1))],
            event_time: None,
        }));
        assert!(row_from_wire(row, 2).unwrap_err().contains("1 cells for 2"));
        let empty = v1::Row {
            found: true,
            cells: vec![v1::Cell { result: None }],
            event_time: None,
        };
        let Ok(Row::Found(record)) = row_from_wire(empty, 1) else {
            panic!("a found row")
        };
        assert!(record.cells[0].is_err());
    }

    #[test]
    fn keys() {
        let key = key_to_wire(vec![KeyPart::Int64(7), KeyPart::String("u".into())]);
        let parts: Vec<_> = key.parts.into_iter().map(key_part_from_wire).collect();
        assert_eq!(
            parts,
            [Some(KeyPart::Int64(7)), Some(KeyPart::String("u".into()))]
        );
        assert_eq!(key_part_from_wire(Value::Double(1.0).into()), None);
    }
}
