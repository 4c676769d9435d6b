//! The shared cache tier against a real Redis: newer answers win, an invalidation keeps
//! answers from calls that started before it out, and every command to a hung or dead Redis
//! (lookups, writes, invalidations) fails within the tier's timeout.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use end_to_end::redis::RedisServer;
use fetcher_api::{KeyPart, Record, Row, Value};
use gateway_config::SharedCacheConfig;
use gateway_stack::cache::shared::{SharedTier, encode};

fn row(v: i64) -> Row {
    Row::Found(Record {
        cells: vec![Ok(Value::Int64(v))],
        event_time: None,
    })
}

/// `s` seconds after the epoch: the tier compares wall-clock times only with each other.
fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

async fn tier(redis: &RedisServer) -> SharedTier {
    let policy = SharedCacheConfig {
        url: redis.url(),
        key_prefix: "t:".to_owned(),
        ttl: Duration::from_secs(60),
        timeout: Duration::from_secs(2),
    };
    let tier = SharedTier::connect(&policy, "plaid").expect("a valid policy");
    assert!(tier.wait_connected(Duration::from_secs(5)).await);
    tier
}

/// Stores `value` as the answer of a call that started at `started` and ended at `fetched`.
async fn put(tier: &SharedTier, key: &str, value: i64, started: u64, fetched: u64) {
    let features = ["balance".to_owned()];
    let answer = row(value);
    tier.put(
        vec![(key.to_owned(), &features[..], &answer)],
        at(fetched),
        at(started),
    )
    .await;
}

async fn held(tier: &SharedTier, key: &str) -> Option<Row> {
    tier.get(&[key.to_owned()], None)
        .await
        .pop()
        .flatten()
        .map(|e| e.row)
}

#[tokio::test]
async fn an_answer_from_a_call_older_than_the_entry_or_an_invalidation_is_not_written() {
    let redis = RedisServer::start();
    let tier = tier(&redis).await;
    let key = tier.redis_key("plaid", "balance", &vec![KeyPart::String("tok".into())]);
    // A call started at 100, answered at 103.
    put(&tier, &key, 1, 100, 103).await;
    assert_eq!(held(&tier, &key).await, Some(row(1)));
    // One started at 101 and answered at 102 is newer: it wins even though it ended first.
    put(&tier, &key, 2, 101, 102).await;
    assert_eq!(held(&tier, &key).await, Some(row(2)));
    // One that started at 99 and ended late does not put its older answer back.
    put(&tier, &key, 3, 99, 110).await;
    assert_eq!(held(&tier, &key).await, Some(row(2)));

    // A webhook at 105: a miss from now on (a tombstone, not an error).
    assert!(tier.invalidate(vec![key.clone()], at(105)).await);
    assert_eq!(held(&tier, &key).await, None);
    assert_eq!(
        redis.cli(&["EXISTS", &key]).trim(),
        "1",
        "the tombstone is kept"
    );
    // A call started at 104, before the webhook, answering at 106: refused.
    put(&tier, &key, 4, 104, 106).await;
    assert_eq!(held(&tier, &key).await, None);
    // The refresh the webhook started, at 105, lands.
    put(&tier, &key, 5, 105, 108).await;
    assert_eq!(held(&tier, &key).await, Some(row(5)));
    // Tombstones and entries expire like any entry.
    let ttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().expect("a number");
    assert!((1..=60_000).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn entries_written_without_a_start_time_count_from_their_fetch() {
    // An entry stored before entries carried `st` has only `at`: it still orders writes.
    let redis = RedisServer::start();
    let tier = tier(&redis).await;
    let key = tier.redis_key("plaid", "balance", &vec![KeyPart::String("tok".into())]);
    let features = ["balance".to_owned()];
    let mut legacy: serde_json::Value =
        serde_json::from_str(&encode(&features, &row(7), at(103), at(103))).expect("JSON");
    legacy.as_object_mut().expect("an object").remove("st");
    redis.cli(&["SET", &key, &legacy.to_string()]);
    assert_eq!(held(&tier, &key).await, Some(row(7)));
    // Started at 102, before the entry's fetch at 103: refused.
    put(&tier, &key, 8, 102, 104).await;
    assert_eq!(held(&tier, &key).await, Some(row(7)));
    put(&tier, &key, 9, 104, 106).await;
    assert_eq!(held(&tier, &key).await, Some(row(9)));
}

#[tokio::test]
async fn every_command_to_a_hung_or_dead_redis_fails_within_the_timeout() {
    let mut redis = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let policy = SharedCacheConfig {
        url: redis.url(),
        key_prefix: "t:".to_owned(),
        ttl: Duration::from_secs(60),
        timeout,
    };
    let tier = SharedTier::connect(&policy, "plaid").expect("a valid policy");
    assert!(tier.wait_connected(Duration::from_secs(5)).await);
    let key = tier.redis_key("plaid", "balance", &vec![KeyPart::String("tok".into())]);
    // A bound on a hang, not a speed: far above the timeout, far below forever.
    let bound = timeout * 20;

    // Hung (SIGSTOP): lookups miss, writes and invalidations fail, each after its timeout.
    redis.pause();
    let lookup = tokio::time::timeout(bound, held(&tier, &key)).await;
    assert_eq!(lookup, Ok(None), "a lookup misses");
    let write = tokio::time::timeout(bound, put(&tier, &key, 1, 100, 101)).await;
    assert!(write.is_ok(), "a write gives up");
    let invalidate = tokio::time::timeout(bound, tier.invalidate(vec![key.clone()], at(102))).await;
    assert_eq!(
        invalidate,
        Ok(false),
        "an invalidation gives up and says so"
    );
    redis.resume();

    // Dead (SIGKILL): the same, without waiting for a reconnection.
    redis.stop();
    let lookup = tokio::time::timeout(bound, held(&tier, &key)).await;
    assert_eq!(lookup, Ok(None));
    let invalidate = tokio::time::timeout(bound, tier.invalidate(vec![key.clone()], at(103))).await;
    assert_eq!(invalidate, Ok(false));

    // Back: writes and invalidations land again once the client has reconnected by itself.
    redis.restart();
    assert!(tier.wait_connected(Duration::from_secs(30)).await);
    let started = std::time::Instant::now();
    while !tier.invalidate(vec![key.clone()], at(104)).await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    put(&tier, &key, 5, 105, 106).await;
    assert_eq!(held(&tier, &key).await, Some(row(5)));
}
