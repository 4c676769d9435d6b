//! A real Apache Kafka broker for tests: a single-node KRaft broker (broker and controller in
//! one JVM) on free loopback ports, run from the jars `.ci/setup` resolves from Maven Central into
//! `tests/kafka/lib` (see `tests/kafka/pom.xml`; `KAFKA_LIBS` points elsewhere).
//!
//! [`KafkaBroker::start`] formats a fresh storage directory (`kafka.tools.StorageTool format`),
//! starts `kafka.Kafka` with a small heap and returns once an rskafka client can list topics.
//! [`stop`](KafkaBroker::stop) kills the JVM and [`restart`](KafkaBroker::restart) starts it again
//! on the same ports and data, so a test can take the broker away and bring it back. The broker
//! is killed when dropped. Without the jars or `java`, [`KafkaBroker::start`] panics saying how to
//! install them; nothing here is mocked.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rskafka::{
    client::{
        ClientBuilder,
        partition::{OffsetAt, UnknownTopicHandling},
    },
    record::RecordAndOffset,
};

/// How long the broker may take to answer after being started (a JVM on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The directory of the broker's jars.
pub fn kafka_libs() -> PathBuf {
    std::env::var_os("KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kafka/lib"))
}

/// One single-node KRaft broker.
#[derive(Debug)]
pub struct KafkaBroker {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Formats storage and starts the broker; returns once it serves metadata.
    pub async fn start() -> KafkaBroker {
        let libs = kafka_libs();
        assert!(
            libs.join("kafka_2.13.jar").is_file()
                || std::fs::read_dir(&libs).is_ok_and(|d| d
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-"))),
            "the Kafka broker's jars are not in {}: run `bash .ci/setup` (it resolves them from \
             Maven Central with tests/kafka/pom.xml)",
            libs.display()
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let [port, controller] = crate::free_ports();
        let data = dir.path().join("data");
        let properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             inter.broker.listener.name=PLAINTEXT\n\
             log.dirs={}\n\
             num.partitions=1\n\
             auto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             log.flush.interval.messages=1\n",
            data.display()
        );
        std::fs::write(dir.path().join("server.properties"), properties)
            .expect("write server.properties");
        let format = Command::new("java")
            .args(jvm_args(&libs))
            .args(["kafka.tools.StorageTool", "format", "-t"])
            .arg("ZmVhdHVyZS1nYXRld2F5LQ")
            .arg("-c")
            .arg(dir.path().join("server.properties"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("`java` runs (Java 17: apt-get install openjdk-17-jdk-headless)");
        assert!(
            format.status.success(),
            "kafka storage format failed: {}",
            String::from_utf8_lossy(&format.stderr)
        );
        let mut broker = KafkaBroker {
            dir,
            port,
            child: None,
        };
        broker.restart().await;
        broker
    }

    /// `127.0.0.1:PORT`, the bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (its data stays for [`KafkaBroker::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports and data; returns once it serves metadata.
    pub async fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("broker.log");
        let child = Command::new("java")
            .args(jvm_args(&kafka_libs()))
            .arg("kafka.Kafka")
            .arg(self.dir.path().join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker.log"))
            .stderr(log)
            .spawn()
            .expect("`java` runs");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the kafka broker exited ({status}):\n{}", self.log());
            }
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let client = ClientBuilder::new(vec![self.bootstrap()]).build().await?;
                client.list_topics().await
            })
            .await;
            if matches!(attempt, Ok(Ok(_))) {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the kafka broker did not answer within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The broker's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let client = ClientBuilder::new(vec![self.bootstrap()])
            .build()
            .await
            .expect("connect to the broker");
        client
            .controller_client()
            .expect("controller client")
            .create_topic(topic, partitions, 1, 10_000)
            .await
            .expect("create the topic");
    }

    /// Every record in `topic`'s partitions up to their current end, by partition.
    pub async fn read_all(&self, topic: &str) -> Vec<(i32, RecordAndOffset)> {
        let client = ClientBuilder::new(vec![self.bootstrap()])
            .build()
            .await
            .expect("connect to the broker");
        let partitions = client
            .list_topics()
            .await
            .expect("list topics")
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions)
            .unwrap_or_default();
        let mut all = Vec::new();
        for p in partitions {
            let pc = Arc::new(
                client
                    .partition_client(topic, p, UnknownTopicHandling::Retry)
                    .await
                    .expect("partition client"),
            );
            let end = pc.get_offset(OffsetAt::Latest).await.expect("end offset");
            let mut offset = pc.get_offset(OffsetAt::Earliest).await.expect("offset");
            while offset < end {
                let (records, _) = pc
                    .fetch_records(offset, 1..8_000_000, 1_000)
                    .await
                    .expect("fetch records");
                for r in records {
                    offset = offset.max(r.offset + 1);
                    all.push((p, r));
                }
            }
        }
        all
    }
}

/// The JVM's options and class path: a small heap, and the quick JIT tier only (a test broker
/// handles little, and starts markedly faster).
fn jvm_args(libs: &std::path::Path) -> Vec<String> {
    vec![
        "-Xmx512m".into(),
        "-Xms64m".into(),
        "-XX:+UseSerialGC".into(),
        "-XX:TieredStopAtLevel=1".into(),
        "-Djava.awt.headless=true".into(),
        "-cp".into(),
        format!("{}/*", libs.display()),
    ]
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
