//! `PushEvents`: events for an aggregation view, applied by the view's `stream` source exactly
//! as its ingest applies the events of its topic ([`fetcher_api::Fetcher::push`]).
//!
//! A push names a view the caller may push to (`[auth.callers.NAME] push_views`; anyone without
//! `[auth]`), of a `stream` source, and at most [`MAX_PUSH_EVENTS`] events. Each event's fields
//! become the JSON object a topic would carry (a timestamp as milliseconds since the epoch); an
//! event that cannot be read is refused alone, by index, with why. A store that cannot be
//! reached fails the push (UNAVAILABLE, or DEADLINE_EXCEEDED past `[limits] max_deadline`):
//! nothing of it was applied, or (if the store failed midway) some events were, which the
//! answer cannot report, so a producer retrying after such a failure may count some twice.

use fetcher_api::EventObject;
use proto::v1::{self, value::Kind};
use serde_json::{Number, Value as Json};
use tonic::Status;

use crate::{Gateway, auth::Caller};

/// The most events one push may carry.
pub const MAX_PUSH_EVENTS: usize = 10_000;

/// Applies `request`'s events to its view.
pub async fn push_events(
    gateway: &Gateway,
    caller: Option<&Caller>,
    request: v1::PushEventsRequest,
) -> Result<v1::PushEventsResponse, Status> {
    let name = request.view.as_str();
    if name.is_empty() {
        return Err(Status::invalid_argument("view: required"));
    }
    let view = gateway
        .config()
        .views
        .get(name)
        .ok_or_else(|| Status::not_found(format!("view: unknown view `{name}`")))?;
    if let Some(c) = caller
        && !c.0.may_push(name)
    {
        crate::telemetry::auth_refused("permission_denied");
        return Err(Status::permission_denied(format!(
            "caller `{}` may not push events to view `{name}`",
            c.0.name
        )));
    }
    let source = gateway
        .sources()
        .iter()
        .find(|s| *s.name == *view.source)
        .filter(|s| &*s.kind == "stream");
    let Some(fetcher) = source.and_then(|s| s.fetcher.as_ref()) else {
        return Err(Status::invalid_argument(format!(
            "view: `{name}` is not an aggregation view (a view of a `stream` source): it keeps \
             nothing events could update"
        )));
    };
    if request.events.len() > MAX_PUSH_EVENTS {
        return Err(Status::invalid_argument(format!(
            "events: {} events, more than the {MAX_PUSH_EVENTS} a push may carry",
            request.events.len()
        )));
    }
    let mut rejected = Vec::new();
    let mut objects = Vec::with_capacity(request.events.len());
    // Index in `objects` -> index in the request.
    let mut indexes = Vec::with_capacity(request.events.len());
    for (i, event) in request.events.into_iter().enumerate() {
        match object(event) {
            Ok(o) => {
                objects.push(o);
                indexes.push(i);
            }
            Err(reason) => rejected.push(v1::RejectedEvent {
                index: i as u32,
                reason,
            }),
        }
    }
    // Bounded like every call: a store that stops answering cannot hold a push (or a drain)
    // for longer than `[limits] max_deadline`.
    let limit = gateway.config().limits.max_deadline;
    let report = tokio::time::timeout(limit, fetcher.push(name, objects))
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "view `{name}`: the push took longer than {limit:?}; some of its events may have \
                 been applied"
            ))
        })?
        .map_err(|e| {
            if e.retryable() {
                Status::unavailable(format!("view `{name}`: the tile store: {}", e.message()))
            } else {
                Status::internal(format!("view `{name}`: {}", e.message()))
            }
        })?;
    rejected.extend(
        report
            .rejected
            .into_iter()
            .map(|(i, reason)| v1::RejectedEvent {
                index: indexes[i] as u32,
                reason,
            }),
    );
    rejected.sort_by_key(|r| r.index);
    metrics::counter!("feature_gateway_push_events_total", "view" => name.to_owned(), "result" => "applied").increment(report.applied);
    metrics::counter!("feature_gateway_push_events_total", "view" => name.to_owned(), "result" => "late").increment(report.late);
    metrics::counter!("feature_gateway_push_events_total", "view" => name.to_owned(), "result" => "rejected").increment(rejected.len() as u64);
    Ok(v1::PushEventsResponse {
        applied: report.applied,
        late: report.late,
        rejected,
    })
}

/// An event's fields as the JSON object a topic would carry.
fn object(event: v1::Event) -> Result<EventObject, String> {
    event
        .fields
        .into_iter()
        .map(|(field, value)| {
            let json = json(value).map_err(|why| format!("field `{field}`: {why}"))?;
            Ok((field, json))
        })
        .collect()
}

fn json(value: v1::Value) -> Result<Json, String> {
    let finite = |d: f64| {
        Number::from_f64(d)
            .map(Json::Number)
            .ok_or("not a finite number")
    };
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::Int64Value(i)) => Json::from(i),
        Some(Kind::DoubleValue(d)) => finite(d)?,
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::TimestampValue(t)) => Json::from(
            t.seconds
                .saturating_mul(1_000)
                .saturating_add(i64::from(t.nanos / 1_000_000)),
        ),
        Some(Kind::Int64ListValue(l)) => Json::from(l.values),
        Some(Kind::DoubleListValue(l)) => {
            Json::Array(l.values.into_iter().map(finite).collect::<Result<_, _>>()?)
        }
        Some(Kind::StringListValue(l)) => Json::from(l.values),
        Some(Kind::BytesValue(_)) => return Err("bytes are not an event value".into()),
    })
}
