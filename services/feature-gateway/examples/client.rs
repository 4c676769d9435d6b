//! Fetches the demo's `fraud_v1` vector, the way a prediction service would.
//!
//! ```sh
//! cargo run --release -p feature-gateway -- demo            # in one terminal
//! cargo run -p feature-gateway --example client             # in another
//! cargo run -p feature-gateway --example client -- http://127.0.0.1:50051 u_00013
//! ```

use std::{collections::BTreeMap, time::Duration};

use proto::v1::{
    FeatureStatus, GetFeaturesRequest, Value, feature_service_client::FeatureServiceClient,
    value::Kind,
};

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let user = args.next().unwrap_or_else(|| "u_00042".to_owned());

    let mut client = FeatureServiceClient::connect(addr).await?;
    let mut request = tonic::Request::new(GetFeaturesRequest {
        feature_service: "fraud_v1".into(),
        entities: BTreeMap::from([
            ("user_id".into(), string(&user)),
            ("card_id".into(), string("c_00042")),
            ("merchant_id".into(), string("m_0042")),
        ]),
        context: BTreeMap::from([
            (
                "amount".into(),
                Value {
                    kind: Some(Kind::DoubleValue(129.99)),
                },
            ),
            ("currency".into(), string("USD")),
            ("channel".into(), string("ecom")),
        ]),
        ..Default::default()
    });
    // The deadline is how the gateway learns the caller's budget: it answers inside it, with
    // whatever could not be fetched in time marked TIMED_OUT.
    request.set_timeout(Duration::from_millis(50));
    let response = client.get_features(request).await?.into_inner();

    println!("request_id {}", response.request_id);
    for ((name, value), status) in response
        .feature_names
        .iter()
        .zip(&response.values)
        .zip(&response.statuses)
    {
        let status = FeatureStatus::try_from(*status)
            .map_or("?", |s| s.as_str_name())
            .trim_start_matches("FEATURE_STATUS_");
        let value = match &value.kind {
            Some(Kind::Int64Value(v)) => v.to_string(),
            Some(Kind::DoubleValue(v)) => v.to_string(),
            Some(Kind::StringValue(v)) => format!("{v:?}"),
            Some(Kind::BoolValue(v)) => v.to_string(),
            Some(Kind::NullValue(_)) | None => "null".to_owned(),
            Some(other) => format!("{other:?}"),
        };
        println!("{name:40} {value:>12}  {status}");
    }
    Ok(())
}
