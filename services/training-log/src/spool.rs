//! The spool: an append-only local overflow for records the sink could not take (queue
//! full, sink failing, log closing), replayed into the sink when it works again or at the next
//! start.
//!
//! # Format
//! A directory of segments `segment-<nanoseconds>.jsonl`, replayed in name order. Each line is a
//! JSON [`Line`]: a schema line the first time a segment holds a schema, then record lines that
//! name it, so a segment replays without the configuration that wrote it (a changed definition
//! still lands in its own files). Segments are cut at [`SEGMENT_BYTES`] to bound replay memory.
//!
//! # Failure
//! Appends are flushed to the OS at once, so they survive a crash of the process (not of the
//! machine). A record past `spool_max_bytes`, or whose write fails, is not kept: the caller counts
//! it as dropped. A torn last line (a crash mid-write) is skipped on replay and counted.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    record::{Record, nanos_since_epoch},
    schema::{LogSchema, SchemaDef},
};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// One line of a segment.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Line {
    /// Declares schema `key`.
    Schema {
        /// The key record lines use.
        key: String,
        /// The schema.
        def: SchemaDef,
    },
    /// A record of schema `key`.
    Record {
        /// The schema's key.
        key: String,
        /// The record.
        record: Record,
    },
}

/// What an append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Records now in the spool.
    pub spooled: u64,
    /// Records that could not be kept.
    pub dropped: u64,
    /// Why they were not, if any were not.
    pub reason: Option<(&'static str, String)>,
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: Option<Segment>,
    /// Bytes of every segment on disk.
    bytes: u64,
    last_name: i64,
}

#[derive(Debug)]
struct Segment {
    out: BufWriter<File>,
    schemas: HashSet<String>,
    bytes: u64,
}

/// The key of a schema within segments.
fn key(schema: &LogSchema) -> String {
    format!("{}@{}", schema.def.feature_service, schema.id)
}

impl Spool {
    /// Opens (creating) the spool in `dir`, counting the segments a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            inner: Mutex::new(Inner {
                current: None,
                bytes: 0,
                last_name: 0,
            }),
        };
        let bytes = spool
            .segments()?
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        spool.lock().bytes = bytes;
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters, not broken invariants: carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Appends `records` of `schema`.
    pub fn append<'a>(
        &self,
        schema: &LogSchema,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Appended {
        let key = key(schema);
        let mut outcome = Appended::default();
        let mut inner = self.lock();
        let mut lines = Vec::new();
        let mut count = 0;
        for record in records {
            count += 1;
            let line = Line::Record {
                key: key.clone(),
                record: record.clone(),
            };
            let mut bytes = match serde_json::to_vec(&line) {
                Ok(b) => b,
                Err(e) => {
                    outcome.dropped += 1;
                    outcome.reason = Some(("spool_error", e.to_string()));
                    continue;
                }
            };
            bytes.push(b'\n');
            if inner.bytes + (lines.len() + bytes.len()) as u64 > self.max_bytes {
                outcome.dropped += 1;
                outcome.reason = Some((
                    "spool_full",
                    format!("the spool holds its limit of {} bytes", self.max_bytes),
                ));
                continue;
            }
            lines.extend_from_slice(&bytes);
        }
        if lines.is_empty() {
            return outcome;
        }
        let kept = count - outcome.dropped;
        match self.write(&mut inner, schema, &key, &lines) {
            Ok(()) => outcome.spooled = kept,
            Err(e) => {
                outcome.dropped += kept;
                outcome.reason = Some(("spool_error", format!("{}: {e}", self.dir.display())));
            }
        }
        outcome
    }

    fn write(
        &self,
        inner: &mut Inner,
        schema: &LogSchema,
        key: &str,
        lines: &[u8],
    ) -> std::io::Result<()> {
        if inner
            .current
            .as_ref()
            .is_some_and(|s| s.bytes >= SEGMENT_BYTES)
        {
            inner.current = None;
        }
        if inner.current.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let name = nanos_since_epoch(SystemTime::now()).max(inner.last_name + 1);
            inner.last_name = name;
            let path = self.dir.join(format!("segment-{name:020}.jsonl"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            inner.current = Some(Segment {
                out: BufWriter::new(file),
                schemas: HashSet::new(),
                bytes: 0,
            });
        }
        let Inner { current, bytes, .. } = inner;
        let Some(segment) = current.as_mut() else {
            return Ok(());
        };
        let mut written = 0u64;
        if !segment.schemas.contains(key) {
            let mut line = serde_json::to_vec(&Line::Schema {
                key: key.to_owned(),
                def: schema.def.clone(),
            })?;
            line.push(b'\n');
            segment.out.write_all(&line)?;
            written += line.len() as u64;
        }
        segment.out.write_all(lines)?;
        segment.out.flush()?;
        segment.schemas.insert(key.to_owned());
        written += lines.len() as u64;
        segment.bytes += written;
        *bytes += written;
        Ok(())
    }

    /// Closes the segment being appended to and lists every segment, oldest first: the ones a
    /// replay may take.
    pub fn seal(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut inner = self.lock();
        if let Some(mut s) = inner.current.take() {
            let _ = s.out.flush();
        }
        drop(inner);
        self.segments()
    }

    fn segments(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
            })
            .collect();
        segments.sort();
        Ok(segments)
    }

    /// Removes a replayed segment.
    pub fn remove(&self, segment: &Path) -> std::io::Result<()> {
        let len = std::fs::metadata(segment).map_or(0, |m| m.len());
        std::fs::remove_file(segment)?;
        let mut inner = self.lock();
        inner.bytes = inner.bytes.saturating_sub(len);
        Ok(())
    }
}

/// Records read back from a segment, each with its schema.
pub type SpooledRecords = Vec<(Arc<LogSchema>, Record)>;

/// The records of a segment with their schemas, and how many lines could not be read.
pub fn read_segment(path: &Path) -> std::io::Result<(SpooledRecords, u64)> {
    let file = BufReader::new(File::open(path)?);
    let mut schemas: HashMap<String, Arc<LogSchema>> = HashMap::new();
    let mut records = Vec::new();
    let mut bad = 0;
    for line in file.split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(&line) {
            Ok(Line::Schema { key, def }) => {
                schemas.insert(key, Arc::new(LogSchema::new(def)));
            }
            Ok(Line::Record { key, record }) => match schemas.get(&key) {
                Some(schema) => records.push((schema.clone(), record)),
                None => bad += 1,
            },
            Err(_) => bad += 1,
        }
    }
    Ok((records, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Cell;

    fn record(id: &str) -> Record {
        Record {
            request_id: id.into(),
            served_at_us: 1,
            latency_us: 2,
            entities: vec![Cell::String("u".into())],
            context: vec![],
            features: vec![],
            inputs: Vec::new(),
        }
    }

    #[test]
    fn appended_records_come_back_in_order_with_their_schema() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let schema = crate::sink::tests::schema();
        let out = spool.append(&schema, &[record("a"), record("b")]);
        assert_eq!(out.spooled, 2);
        spool.append(&schema, &[record("c")]);
        let segments = spool.seal().unwrap();
        assert_eq!(segments.len(), 1);
        spool.append(&schema, &[record("d")]);
        let (records, bad) = read_segment(&segments[0]).unwrap();
        assert_eq!(bad, 0);
        let ids: Vec<_> = records.iter().map(|(_, r)| r.request_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(records[0].0.id, schema.id);
        // The next segment has its own schema line, so it replays on its own.
        let segments = spool.seal().unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(read_segment(&segments[1]).unwrap().0.len(), 1);
        let before = spool.bytes();
        spool.remove(&segments[0]).unwrap();
        assert!(spool.bytes() < before);
        // A reopened spool counts what is on disk.
        let reopened = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(reopened.bytes(), spool.bytes());
    }

    #[test]
    fn the_limit_drops_and_says_so_and_torn_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 600).unwrap();
        let schema = crate::sink::tests::schema();
        let records: Vec<_> = (0..20).map(|i| record(&i.to_string())).collect();
        let out = spool.append(&schema, &records);
        assert!(out.dropped > 0 && out.spooled > 0, "{out:?}");
        assert_eq!(out.spooled + out.dropped, 20);
        assert_eq!(out.reason.unwrap().0, "spool_full");
        let segments = spool.seal().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&segments[0])
            .unwrap();
        f.write_all(b"{\"t\":\"record\",\"key\":").unwrap();
        let (records, bad) = read_segment(&segments[0]).unwrap();
        assert_eq!(records.len() as u64, out.spooled);
        assert_eq!(bad, 1);
    }
}
