//! The options of a `stream` source and of its views, and their pure compilation into
//! [`aggregation::ViewDef`]s (what `validate` checks, without I/O).

use std::{collections::BTreeMap, time::Duration};

use aggregation::{Field, KeyField, Op, ViewDef, spec::millis};
use fetcher_api::{ConfigDuration, FeatureType, Problem, ViewSpec};
use fetcher_redis::{RedisSourceConfig, config::CompiledSource as CompiledRedis};
use serde::Deserialize;

/// Where tiles are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Redis (`[sources.NAME.redis]`): shared by every gateway replica and ingest process.
    #[default]
    Redis,
    /// This process's memory: for the embedded demo and trying things out. Only `PushEvents`
    /// writes to it; it is not shared and is lost at exit.
    Memory,
}

/// The source-level options of a `stream` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSourceConfig {
    /// `redis` (default) or `memory`.
    #[serde(default)]
    pub store: StoreKind,
    /// The Redis holding the tiles, with the options of a `redis` source (`url`, `mode`,
    /// `nodes`, `pool_size`, `connect_timeout`, `command_timeout`, `tls_*`).
    #[serde(default)]
    pub redis: Option<RedisSourceConfig>,
    /// The Kafka topic `feature-gateway ingest` consumes; without it, events only come through
    /// `PushEvents`.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Prefix of every Redis key of the source. Default `fg`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// `store = "memory"` only: a JSON-lines file of events applied when the source is built
    /// (relative to the configuration file), e.g. the embedded demo's recent payments.
    #[serde(default)]
    pub seed: Option<String>,
}

/// `[sources.NAME.kafka]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic of events, one JSON object per record.
    pub topic: String,
    /// A topic bad events are copied to (with the reason in a header); they are only counted
    /// when absent.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Most bytes fetched per partition per request. Default 1 MiB.
    #[serde(default)]
    pub fetch_max_bytes: Option<usize>,
    /// Longest a fetch waits for new records. Default 100ms.
    #[serde(default)]
    pub fetch_max_wait: Option<ConfigDuration>,
}

/// The view-level options of a view on a `stream` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamViewConfig {
    /// The event field holding the event time: an integer of milliseconds since the Unix epoch,
    /// or an RFC 3339 string.
    pub time_field: String,
    /// The event field holding an entity's key, when it is not the entity's name:
    /// `{ card_id = "card" }`.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// How far behind the newest event time seen on its partition an event may be and still be
    /// applied; later ones are counted and dropped. Default 5m. Pushed events, which have no
    /// stream, are measured against the gateway's clock.
    #[serde(default)]
    pub allowed_lateness: Option<ConfigDuration>,
    /// One per feature of the view: `txn_count_10m = { op = "count", window = "10m" }`.
    pub aggregations: BTreeMap<String, AggregationConfig>,
}

/// `[views.NAME.aggregations.FEATURE]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    /// `count`, `sum`, `mean`, `min`, `max`, `last`, `last_n` or `approx_distinct`.
    pub op: String,
    /// The event field aggregated (all but `count`).
    #[serde(default)]
    pub field: Option<String>,
    /// The window, e.g. `"10m"`, `"24h"`, `"7d"`.
    pub window: ConfigDuration,
    /// The tile size: default 1 minute for windows up to an hour, 1 hour up to 12 days, 1 day
    /// above. The window must be a whole number of tiles.
    #[serde(default)]
    pub tile: Option<ConfigDuration>,
    /// `last_n`'s length.
    #[serde(default)]
    pub n: Option<u16>,
    /// The field's type, when no feature implies it (`approx_distinct` of an int64 field:
    /// `"int64"`); default double for `mean`, string for `approx_distinct`.
    #[serde(default)]
    pub field_type: Option<String>,
}

/// A source's options, checked.
#[derive(Clone, Debug)]
pub struct CompiledSource {
    pub store: StoreKind,
    /// The Redis options, for `store = "redis"`.
    pub redis: Option<CompiledRedis>,
    pub kafka: Option<KafkaConfig>,
    pub key_prefix: String,
    pub seed: Option<String>,
}

/// Default `allowed_lateness`: five minutes.
pub const DEFAULT_ALLOWED_LATENESS_MS: i64 = 5 * 60_000;

/// Default Kafka fetch size per partition.
pub const DEFAULT_FETCH_MAX_BYTES: usize = 1 << 20;
/// Default longest wait of a Kafka fetch.
pub const DEFAULT_FETCH_MAX_WAIT: Duration = Duration::from_millis(100);

/// Checks a source's options.
pub fn compile_source(config: &StreamSourceConfig) -> Result<CompiledSource, Vec<Problem>> {
    let mut problems = Vec::new();
    let redis = match (config.store, &config.redis) {
        (StoreKind::Redis, None) => {
            problems.push(
                Problem::new(
                    "tiles are kept in Redis: give `[redis]` (a `url` and the options of a redis \
                     source), or `store = \"memory\"` for this process only",
                )
                .at("redis"),
            );
            None
        }
        (StoreKind::Memory, Some(_)) => {
            problems.push(Problem::new("`store = \"memory\"` uses no Redis").at("redis"));
            None
        }
        (StoreKind::Redis, Some(redis)) => match fetcher_redis::config::compile_source(redis) {
            Ok(compiled) => Some(compiled),
            Err(found) => {
                problems.extend(found.into_iter().map(|p| nest(p, "redis")));
                None
            }
        },
        (StoreKind::Memory, None) => None,
    };
    if let Some(kafka) = &config.kafka {
        if kafka.brokers.is_empty() {
            problems.push(
                Problem::new("needs at least one `host:port`")
                    .at("kafka")
                    .at("brokers"),
            );
        }
        for broker in &kafka.brokers {
            if broker
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                problems.push(
                    Problem::new(format!("`{broker}` is not a `host:port` address"))
                        .at("kafka")
                        .at("brokers"),
                );
            }
        }
        if kafka.topic.trim().is_empty() {
            problems.push(Problem::new("cannot be empty").at("kafka").at("topic"));
        }
        if kafka.dead_letter_topic.as_deref() == Some(kafka.topic.as_str()) {
            problems.push(
                Problem::new("must differ from `topic`")
                    .at("kafka")
                    .at("dead_letter_topic"),
            );
        }
        if kafka.fetch_max_bytes == Some(0) {
            problems.push(
                Problem::new("must be at least 1")
                    .at("kafka")
                    .at("fetch_max_bytes"),
            );
        }
        if config.store == StoreKind::Memory {
            problems.push(
                Problem::new(
                    "ingest writes tiles where every gateway reads them: a Kafka stream needs \
                     `store = \"redis\"`",
                )
                .at("kafka"),
            );
        }
    }
    if config.seed.is_some() && config.store != StoreKind::Memory {
        problems.push(
            Problem::new(
                "seeds `store = \"memory\"` only: load history into Redis with \
                 `feature-gateway backfill --load`",
            )
            .at("seed"),
        );
    }
    let key_prefix = config.key_prefix.clone().unwrap_or_else(|| "fg".to_owned());
    if key_prefix.contains(['{', '}']) {
        problems.push(
            Problem::new("cannot hold `{` or `}` (they mark cluster hash tags)").at("key_prefix"),
        );
    }
    if problems.is_empty() {
        Ok(CompiledSource {
            store: config.store,
            redis,
            kafka: config.kafka.clone(),
            key_prefix,
            seed: config.seed.clone(),
        })
    } else {
        Err(problems)
    }
}

/// A problem of the `redis` options, one level down.
fn nest(problem: Problem, key: &str) -> Problem {
    let mut nested = Problem::new(problem.message()).at(key);
    for field in problem.field() {
        nested = nested.at(field.clone());
    }
    nested
}

/// Checks a view's options against its keys and features, compiling them into the aggregates
/// it computes. The problems are the view's (its caller places them on it).
pub fn compile_view(view: &ViewSpec, config: &StreamViewConfig) -> Result<ViewDef, Vec<Problem>> {
    let mut problems = Vec::new();
    if view.keys.is_empty() {
        problems.push(Problem::new("a stream view needs at least one entity"));
    }
    for entity in config.keys.keys() {
        if !view.keys.iter().any(|k| &k.name == entity) {
            problems.push(
                Problem::new(format!("`{entity}` is not an entity of the view"))
                    .at("keys")
                    .at(entity.clone()),
            );
        }
    }
    if config.time_field.trim().is_empty() {
        problems.push(Problem::new("cannot be empty").at("time_field"));
    }
    let mut def = ViewDef {
        name: view.name.clone(),
        keys: view
            .keys
            .iter()
            .map(|k| KeyField {
                entity: k.name.clone(),
                field: config
                    .keys
                    .get(&k.name)
                    .cloned()
                    .unwrap_or_else(|| k.name.clone()),
                ty: k.ty,
            })
            .collect(),
        time_field: config.time_field.clone(),
        allowed_lateness: config
            .allowed_lateness
            .map_or(DEFAULT_ALLOWED_LATENESS_MS, |d| millis(d.get())),
        series: Vec::new(),
        aggregates: Vec::new(),
    };
    // A field's type: what the features reading it imply (a `sum` declared int64 reads an
    // int64 field), or `field_type`; `mean` and `approx_distinct` imply none and take another
    // feature's, else double and string. Two that disagree are an error.
    let mut field_types: BTreeMap<&str, (FeatureType, &str)> = BTreeMap::new();
    for (feature, ty) in &view.features {
        let Some(agg) = config.aggregations.get(feature) else {
            continue;
        };
        let (Ok(op), Some(name)) = (Op::parse(&agg.op, agg.n), &agg.field) else {
            continue;
        };
        let declared = match agg.field_type.as_deref().map(str::parse::<FeatureType>) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                problems.push(
                    Problem::new(e)
                        .at("aggregations")
                        .at(feature.clone())
                        .at("field_type"),
                );
                continue;
            }
            None => None,
        };
        let Some(t) = declared.or_else(|| op.field_type_for(*ty)) else {
            continue;
        };
        match field_types.get(name.as_str()) {
            Some((other, by)) if *other != t => problems.push(
                Problem::new(format!(
                    "field `{name}` would be a {} here but is a {} for feature `{by}`",
                    t.name(),
                    other.name()
                ))
                .at("aggregations")
                .at(feature.clone())
                .at("field"),
            ),
            Some(_) => {}
            None => {
                field_types.insert(name, (t, feature));
            }
        }
    }
    for (feature, ty) in &view.features {
        let Some(agg) = config.aggregations.get(feature) else {
            problems.push(
                Problem::new(format!(
                    "feature `{feature}` has no aggregation: add `aggregations.{feature} = {{ op = \"count\", window = \"10m\" }}` or the like"
                ))
                .at("aggregations"),
            );
            continue;
        };
        let at = |p: Problem| p.at("aggregations").at(feature.clone());
        let op = match Op::parse(&agg.op, agg.n) {
            Ok(op) => op,
            Err(e) => {
                problems.push(at(Problem::new(e)).at(if agg.op == "last_n" { "n" } else { "op" }));
                continue;
            }
        };
        if agg.n.is_some() && !matches!(op, Op::LastN(_)) {
            problems.push(at(Problem::new("`n` is for `last_n`")).at("n"));
        }
        let field = match (&agg.field, op.needs_field()) {
            (None, true) => {
                problems.push(at(Problem::new(format!(
                    "`{op}` needs the event `field` it aggregates"
                ))));
                continue;
            }
            (Some(_), false) => {
                problems.push(
                    at(Problem::new("`count` counts events: it takes no `field`")).at("field"),
                );
                continue;
            }
            (None, false) => None,
            (Some(name), true) => {
                let ty = match field_types.get(name.as_str()) {
                    Some((t, _)) => *t,
                    None if op == Op::ApproxDistinct => FeatureType::String,
                    None => FeatureType::Double,
                };
                Some(Field {
                    name: name.clone(),
                    ty,
                })
            }
        };
        let tile = agg.tile.map(|d| millis(d.get()));
        match def.add(feature, op, field, millis(agg.window.get()), tile) {
            Ok(()) => {
                let output = def.aggregates.last().map(|a| a.output);
                if output != Some(*ty) {
                    def.aggregates.pop();
                    problems.push(at(Problem::new(format!(
                        "`{op}` gives a {} here, but the feature is declared {}",
                        output.map_or("?", FeatureType::name),
                        ty.name()
                    ))));
                }
            }
            Err(e) => {
                let key = if e.contains("tile") && agg.tile.is_some() {
                    "tile"
                } else if e.contains("window") {
                    "window"
                } else if e.contains("field") {
                    "field"
                } else {
                    "op"
                };
                problems.push(at(Problem::new(e)).at(key));
            }
        }
    }
    for name in config.aggregations.keys() {
        if !view.features.iter().any(|(f, _)| f == name) {
            problems.push(
                Problem::new(format!(
                    "the view has no feature `{name}`: declare it under `features`"
                ))
                .at("aggregations")
                .at(name.clone()),
            );
        }
    }
    if problems.is_empty() {
        Ok(def)
    } else {
        Err(problems)
    }
}
