//! The shared cache tier against a real Redis: newer answers win, an invalidation keeps
//! answers from calls that started before it out, and every command to a hung or dead Redis
//! (lookups, writes, invalidations) fails within the tier's timeout. On a Redis Cluster: a lookup
//! of keys in many slots, writes and invalidations reach each key's node, messages reach every
//! replica whatever node each is connected to, and a key whose slot moved is read from its new
//! node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use end_to_end::redis::{RedisCluster, RedisServer, key_slot};
use fetcher_api::{KeyPart, Record, Row, Value};
use gateway_config::{SharedCacheConfig, SharedTierMode};
use gateway_stack::cache::shared::{InvalidationMessage, SharedTier, encode};

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
        mode: SharedTierMode::Standalone,
        nodes: Vec::new(),
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
        mode: SharedTierMode::Standalone,
        nodes: Vec::new(),
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

#[tokio::test]
async fn on_a_cluster_keys_of_every_slot_are_read_at_once_and_invalidations_reach_every_replica() {
    let cluster = RedisCluster::start(3);
    let addresses = cluster.addresses();
    let policy = SharedCacheConfig {
        url: format!("redis://{}", addresses[0]),
        mode: SharedTierMode::Cluster,
        nodes: vec![("127.0.0.1".to_owned(), cluster.ports()[1])],
        key_prefix: "t:".to_owned(),
        ttl: Duration::from_secs(60),
        timeout: Duration::from_secs(2),
    };
    let a = SharedTier::connect(&policy, "plaid").expect("a valid policy");
    let b = SharedTier::connect(&policy, "plaid").expect("a valid policy");
    assert!(a.wait_connected(Duration::from_secs(5)).await);
    assert!(b.wait_connected(Duration::from_secs(5)).await);

    // Twenty tokens' keys, over every primary: written by A, read back by B in one lookup.
    let tokens: Vec<KeyPart> = (0..20)
        .map(|i| KeyPart::String(format!("tok{i}")))
        .collect();
    let keys: Vec<String> = tokens
        .iter()
        .map(|t| a.redis_key("plaid", "balance", &vec![t.clone()]))
        .collect();
    let owners: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| cluster.owner(key_slot(k.as_bytes())))
        .collect();
    assert_eq!(owners.len(), 3, "the keys span every primary");
    for (i, key) in keys.iter().enumerate() {
        put(&a, key, i as i64, 100, 101).await;
    }
    let found = b.get(&keys, None).await;
    let rows: Vec<Option<Row>> = found.into_iter().map(|e| e.map(|e| e.row)).collect();
    assert_eq!(
        rows,
        (0..20).map(|i| Some(row(i))).collect::<Vec<_>>(),
        "every key read in one lookup"
    );

    // Invalidations: tombstones on each key's node, and a message from A heard by B.
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel::<InvalidationMessage>();
    b.listen(move |message| heard_tx.send(message).is_ok());
    assert!(a.invalidate(keys[..10].to_vec(), at(102)).await);
    let parts: std::collections::HashSet<KeyPart> = tokens[..10].iter().cloned().collect();
    // B subscribes in the background: publish until it hears one.
    let message = loop {
        assert!(a.publish_invalidation(&parts, None).await);
        match tokio::time::timeout(Duration::from_millis(200), heard.recv()).await {
            Ok(Some(message)) => break message,
            Ok(None) => panic!("B stopped listening"),
            Err(_) => continue,
        }
    };
    assert_eq!(message.parts.len(), 10);
    let rows: Vec<bool> = b
        .get(&keys, None)
        .await
        .iter()
        .map(Option::is_some)
        .collect();
    assert_eq!(rows, [[false; 10], [true; 10]].concat());

    // A slot moves: its key is read from the new node (a redirected lookup is a miss, once).
    let key = &keys[15];
    let slot = key_slot(key.as_bytes());
    let from = cluster.owner(slot);
    let to = cluster
        .cluster_nodes()
        .into_iter()
        .find(|n| n.primary && n.port != from)
        .unwrap()
        .port;
    let migration = cluster.migrate_slot(slot, to);
    migration.finish(&cluster);
    let started = std::time::Instant::now();
    while held(&b, key).await != Some(row(15)) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the key is never read from its new node"
        );
    }
}
