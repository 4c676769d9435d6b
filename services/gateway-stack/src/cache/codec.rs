//! The cache's compact binary form: an entry is one byte string (one heap block) holding its key
//! (its shape and entity key) and its value (flags, fetch time and row), instead of a key vector,
//! a cell vector of 32-byte cells and a heap string per text value.
//!
//! # Entry
//! `varint(key length)`, the key, the value.
//!
//! # Key
//! `varint(shape)`, then per key part either `0, zigzag-varint(i)` (int64) or
//! `varint(2·len + 1), bytes` (string). Two keys are equal exactly when their bytes are.
//!
//! # Value
//! `flags: u8` ([`FOUND`], [`INVALIDATED`], [`EVENT_TIME`]), `zigzag-varint(fetched_at)` (ms
//! since the store's epoch), then for a found row its event time if flagged and one cell per
//! feature to the end of the block: a tag byte and its payload (see the `tag` constants). A
//! double that is a short decimal (`1234.56`, as most stored amounts are) is kept as its integer
//! mantissa and scale when that reads back bit for bit; any other double as its 8 bytes.
//!
//! Decoding trusts nothing it reads: a block that does not decode (which only a bug could
//! produce) reads as `None`, and the cache treats it as a miss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fetcher_api::{Cell, CellError, KeyPart, Record, Row, Value};

/// The row was found (else it is a remembered `NOT_FOUND`).
pub const FOUND: u8 = 1;
/// Invalidated: never fresh again, still a STALE fallback.
pub const INVALIDATED: u8 = 2;
/// The row carries an event time.
pub const EVENT_TIME: u8 = 4;

mod tag {
    pub const NULL: u8 = 0;
    pub const INT64: u8 = 1;
    pub const DOUBLE: u8 = 2;
    pub const STRING: u8 = 3;
    pub const FALSE: u8 = 4;
    pub const TRUE: u8 = 5;
    pub const BYTES: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const INT64_LIST: u8 = 8;
    pub const DOUBLE_LIST: u8 = 9;
    pub const STRING_LIST: u8 = 10;
    pub const CELL_ERROR: u8 = 11;
    /// `DECIMAL + k`: a double stored as `zigzag-varint(m)`, read back as `m / 10^k`.
    pub const DECIMAL: u8 = 16;
}

/// Exact powers of ten (every one of them is representable in an f64).
const POW10: [f64; 9] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// The key of `key` under `shape`.
pub fn encode_key(shape: u32, key: &[KeyPart], out: &mut Vec<u8>) {
    out.clear();
    put_varint(out, u64::from(shape));
    for part in key {
        put_key_part(part, out);
    }
}

/// One key part's encoding, as it appears inside a key.
pub fn put_key_part(part: &KeyPart, out: &mut Vec<u8>) {
    match part {
        KeyPart::Int64(i) => {
            out.push(0);
            put_varint(out, zigzag(*i));
        }
        KeyPart::String(s) => {
            put_varint(out, (s.len() as u64) << 1 | 1);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// A key's shape and the encoded parts (each as [`put_key_part`] writes it).
pub fn key_parts(mut key: &[u8]) -> Option<(u32, Vec<&[u8]>)> {
    let shape = u32::try_from(get_varint(&mut key)?).ok()?;
    let mut parts = Vec::with_capacity(1);
    while !key.is_empty() {
        let start = key;
        let head = get_varint(&mut key)?;
        if head & 1 == 1 {
            take(&mut key, usize::try_from(head >> 1).ok()?)?;
        } else if head == 0 {
            get_varint(&mut key)?;
        } else {
            return None;
        }
        parts.push(&start[..start.len() - key.len()]);
    }
    Some((shape, parts))
}

/// A key's shape and entity key.
pub fn decode_key(key: &[u8]) -> Option<(u32, Vec<KeyPart>)> {
    let (shape, parts) = key_parts(key)?;
    let parts = parts
        .into_iter()
        .map(|mut p| {
            let head = get_varint(&mut p)?;
            Some(if head == 0 {
                KeyPart::Int64(unzigzag(get_varint(&mut p)?))
            } else {
                KeyPart::String(std::str::from_utf8(p).ok()?.to_owned())
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((shape, parts))
}

/// An entry's block: `varint(key length)`, the key, then the value of `row` fetched
/// `fetched_at` ms after the store's epoch. Allocated at its exact length (the allocator's size
/// class is what the cache's weigher charges).
pub fn encode_entry(key: &[u8], row: &Row, fetched_at: i64, invalidated: bool) -> Box<[u8]> {
    let mut out = Vec::with_capacity(24 + key.len() + row_hint(row));
    put_bytes(&mut out, key);
    put_value(&mut out, row, fetched_at, invalidated);
    Box::from(&out[..])
}

/// A block's key and value.
pub fn split_entry(mut block: &[u8]) -> Option<(&[u8], &[u8])> {
    let key = get_bytes(&mut block)?;
    Some((key, block))
}

/// Sets `flag` in a block's flags.
pub fn set_flag(block: &mut [u8], flag: u8) {
    let mut rest = &block[..];
    if get_bytes(&mut rest).is_some() && !rest.is_empty() {
        let at = block.len() - rest.len();
        block[at] |= flag;
    }
}

fn put_value(out: &mut Vec<u8>, row: &Row, fetched_at: i64, invalidated: bool) {
    let mut flags = if invalidated { INVALIDATED } else { 0 };
    if let Row::Found(record) = row {
        flags |= FOUND;
        if record.event_time.is_some() {
            flags |= EVENT_TIME;
        }
    }
    out.push(flags);
    put_varint(out, zigzag(fetched_at));
    if let Row::Found(record) = row {
        if let Some(t) = record.event_time {
            put_time(out, t);
        }
        for cell in &record.cells {
            put_cell(cell, out);
        }
    }
}

/// A value's flags and fetch time (ms after the store's epoch), without decoding its row.
pub fn header(mut value: &[u8]) -> Option<(u8, i64)> {
    let flags = *take(&mut value, 1)?.first()?;
    Some((flags, unzigzag(get_varint(&mut value)?)))
}

/// A value's row; `cells` is the number expected (a capacity hint).
pub fn decode_row(mut value: &[u8], cells: usize) -> Option<Row> {
    let flags = *take(&mut value, 1)?.first()?;
    get_varint(&mut value)?;
    if flags & FOUND == 0 {
        return value.is_empty().then_some(Row::NotFound);
    }
    let event_time = if flags & EVENT_TIME != 0 {
        Some(get_time(&mut value)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(cells);
    while !value.is_empty() {
        out.push(get_cell(&mut value)?);
    }
    Some(Row::Found(Record {
        cells: out,
        event_time,
    }))
}

fn row_hint(row: &Row) -> usize {
    match row {
        Row::NotFound => 0,
        Row::Found(r) => r.cells.len() * 6,
    }
}

fn put_cell(cell: &Cell, out: &mut Vec<u8>) {
    let v = match cell {
        Err(CellError(message)) => {
            out.push(tag::CELL_ERROR);
            put_bytes(out, message.as_bytes());
            return;
        }
        Ok(v) => v,
    };
    match v {
        Value::Null => out.push(tag::NULL),
        Value::Int64(i) => {
            out.push(tag::INT64);
            put_varint(out, zigzag(*i));
        }
        Value::Double(d) => put_double(*d, out),
        Value::String(s) => {
            out.push(tag::STRING);
            put_bytes(out, s.as_bytes());
        }
        Value::Bool(b) => out.push(if *b { tag::TRUE } else { tag::FALSE }),
        Value::Bytes(b) => {
            out.push(tag::BYTES);
            put_bytes(out, b);
        }
        Value::Timestamp(t) => {
            out.push(tag::TIMESTAMP);
            put_time(out, *t);
        }
        Value::Int64List(l) => {
            out.push(tag::INT64_LIST);
            put_varint(out, l.len() as u64);
            for i in l {
                put_varint(out, zigzag(*i));
            }
        }
        Value::DoubleList(l) => {
            out.push(tag::DOUBLE_LIST);
            put_varint(out, l.len() as u64);
            for d in l {
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        Value::StringList(l) => {
            out.push(tag::STRING_LIST);
            put_varint(out, l.len() as u64);
            for s in l {
                put_bytes(out, s.as_bytes());
            }
        }
    }
}

/// A double as a short decimal when one reads back as exactly the same bits (and is shorter than
/// its 8 bytes), else as its 8 bytes.
fn put_double(d: f64, out: &mut Vec<u8>) {
    if d.is_finite() {
        for (k, scale) in POW10.iter().enumerate() {
            let m = (d * scale).round();
            // Within ±2^53 every integer is exact, and so is its conversion to i64.
            if m.abs() >= 9_007_199_254_740_992.0 {
                break;
            }
            // Checked the way it is read back, so that -0.0 (whose mantissa is 0) stays raw.
            let m = m as i64;
            if (m as f64 / scale).to_bits() == d.to_bits() {
                let z = zigzag(m);
                if varint_len(z) < 8 {
                    out.push(tag::DECIMAL + k as u8);
                    put_varint(out, z);
                    return;
                }
                break;
            }
        }
    }
    out.push(tag::DOUBLE);
    out.extend_from_slice(&d.to_le_bytes());
}

fn get_cell(input: &mut &[u8]) -> Option<Cell> {
    let t = *take(input, 1)?.first()?;
    Some(Ok(match t {
        tag::NULL => Value::Null,
        tag::INT64 => Value::Int64(unzigzag(get_varint(input)?)),
        tag::DOUBLE => Value::Double(get_f64(input)?),
        tag::STRING => Value::String(get_string(input)?),
        tag::FALSE => Value::Bool(false),
        tag::TRUE => Value::Bool(true),
        tag::BYTES => Value::Bytes(get_bytes(input)?.to_vec()),
        tag::TIMESTAMP => Value::Timestamp(get_time(input)?),
        tag::INT64_LIST => Value::Int64List(get_list(input, |i| Some(unzigzag(get_varint(i)?)))?),
        tag::DOUBLE_LIST => Value::DoubleList(get_list(input, get_f64)?),
        tag::STRING_LIST => Value::StringList(get_list(input, get_string)?),
        tag::CELL_ERROR => return Some(Err(CellError(get_string(input)?))),
        t if (tag::DECIMAL..tag::DECIMAL + POW10.len() as u8).contains(&t) => {
            let m = unzigzag(get_varint(input)?);
            Value::Double(m as f64 / POW10[usize::from(t - tag::DECIMAL)])
        }
        _ => return None,
    }))
}

/// A time as `zigzag-varint(seconds from the Unix epoch, floored), varint(nanoseconds)`.
fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    };
    put_varint(out, zigzag(secs));
    put_varint(out, u64::from(nanos));
}

fn get_time(input: &mut &[u8]) -> Option<SystemTime> {
    let secs = unzigzag(get_varint(input)?);
    let nanos = Duration::from_nanos(get_varint(input)?);
    if nanos >= Duration::from_secs(1) {
        return None;
    }
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn get_bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = get_len(input)?;
    take(input, n)
}

/// A length, then that many items read by `item`.
fn get_list<T>(input: &mut &[u8], item: impl Fn(&mut &[u8]) -> Option<T>) -> Option<Vec<T>> {
    let n = get_len(input)?;
    let mut list = Vec::with_capacity(n);
    for _ in 0..n {
        list.push(item(input)?);
    }
    Some(list)
}

fn get_string(input: &mut &[u8]) -> Option<String> {
    std::str::from_utf8(get_bytes(input)?)
        .ok()
        .map(str::to_owned)
}

fn get_f64(input: &mut &[u8]) -> Option<f64> {
    Some(f64::from_le_bytes(take(input, 8)?.try_into().ok()?))
}

/// A length or count, which cannot exceed what is left to read (every item takes a byte).
fn get_len(input: &mut &[u8]) -> Option<usize> {
    usize::try_from(get_varint(input)?)
        .ok()
        .filter(|&n| n <= input.len())
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if n > input.len() {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn zigzag(i: i64) -> u64 {
    ((i << 1) ^ (i >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in input.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(cells: Vec<Cell>, event_time: Option<SystemTime>) {
        let row = Row::Found(Record { cells, event_time });
        let n = match &row {
            Row::Found(r) => r.cells.len(),
            Row::NotFound => 0,
        };
        let block = encode_entry(b"key", &row, 1234, false);
        let (key, value) = split_entry(&block).expect("splits");
        assert_eq!(key, b"key");
        assert_eq!(header(value), Some((FOUND | event_flag(&row), 1234)));
        let back = decode_row(value, n).expect("decodes");
        // Compared bit for bit, so that NaN equals itself and -0.0 differs from 0.0.
        assert_eq!(format!("{back:?}"), format!("{row:?}"), "{value:?}");
        assert_eq!(bits(&back), bits(&row));
    }

    fn event_flag(row: &Row) -> u8 {
        match row {
            Row::Found(r) if r.event_time.is_some() => EVENT_TIME,
            _ => 0,
        }
    }

    /// Every double of a row, as bits.
    fn bits(row: &Row) -> Vec<u64> {
        let Row::Found(r) = row else {
            return Vec::new();
        };
        r.cells
            .iter()
            .flat_map(|c| match c {
                Ok(Value::Double(d)) => vec![d.to_bits()],
                Ok(Value::DoubleList(l)) => l.iter().map(|d| d.to_bits()).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn every_value_round_trips() {
        let before_epoch = UNIX_EPOCH - Duration::new(86_400, 250);
        round_trip(
            vec![
                Ok(Value::Null),
                Ok(Value::Int64(0)),
                Ok(Value::Int64(-1)),
                Ok(Value::Int64(i64::MAX)),
                Ok(Value::Int64(i64::MIN)),
                Ok(Value::String(String::new())),
                Ok(Value::String("näive ☃".into())),
                Ok(Value::Bool(false)),
                Ok(Value::Bool(true)),
                Ok(Value::Bytes(Vec::new())),
                Ok(Value::Bytes(vec![0, 255, 7])),
                Ok(Value::Timestamp(UNIX_EPOCH)),
                Ok(Value::Timestamp(
                    UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999),
                )),
                Ok(Value::Timestamp(before_epoch)),
                Ok(Value::Timestamp(UNIX_EPOCH - Duration::from_secs(3))),
                Ok(Value::Int64List(Vec::new())),
                Ok(Value::Int64List(vec![i64::MIN, -5, 0, 300, i64::MAX])),
                Ok(Value::DoubleList(vec![f64::NAN, -0.0, 1.5, f64::INFINITY])),
                Ok(Value::StringList(vec![
                    String::new(),
                    "x".into(),
                    "yz".into(),
                ])),
                Ok(Value::StringList(Vec::new())),
                Err(CellError(String::new())),
                Err(CellError("ITEM_LOGIN_REQUIRED".into())),
            ],
            Some(UNIX_EPOCH + Duration::new(1_600_000_000, 5)),
        );
        round_trip(Vec::new(), None);
        round_trip(vec![Ok(Value::Null)], Some(before_epoch));
    }

    #[test]
    fn doubles_round_trip_bit_for_bit() {
        let doubles = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            0.3,
            1234.56,
            -4999.99,
            0.4321,
            12.345678,
            1e-9,
            1e300,
            -1e300,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            f64::MAX,
            f64::MIN,
            9_007_199_254_740_993.0,
            1.0 / 3.0,
            std::f64::consts::PI,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff8_0000_dead_beef),
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        round_trip(
            doubles.iter().map(|&d| Ok(Value::Double(d))).collect(),
            None,
        );
    }

    #[test]
    fn short_decimals_take_a_few_bytes() {
        let size = |d: f64| {
            let mut out = Vec::new();
            put_double(d, &mut out);
            out.len()
        };
        assert_eq!(size(1234.56), 4);
        assert_eq!(size(0.4321), 3);
        assert_eq!(size(12.0), 2);
        assert_eq!(size(-0.0), 9, "-0.0 would read back as 0.0");
        assert_eq!(size(1.0 / 3.0), 9);
        assert_eq!(size(f64::NAN), 9);
    }

    #[test]
    fn not_found_and_flags_round_trip() {
        let mut block = encode_entry(&[], &Row::NotFound, -70_000, false);
        assert_eq!(block.len(), 5, "length, flags and a 3-byte time");
        set_flag(&mut block, INVALIDATED);
        let (key, value) = split_entry(&block).expect("splits");
        assert!(key.is_empty());
        assert_eq!(header(value), Some((INVALIDATED, -70_000)));
        assert_eq!(decode_row(value, 3), Some(Row::NotFound));
    }

    #[test]
    fn keys_round_trip_and_differ_when_their_parts_do() {
        let keys = [
            vec![KeyPart::String(String::new())],
            vec![KeyPart::String("u_000001".into())],
            vec![KeyPart::Int64(0)],
            vec![KeyPart::Int64(i64::MIN), KeyPart::String("é".into())],
            vec![KeyPart::String("a".into()), KeyPart::String("b".into())],
            vec![KeyPart::String("ab".into())],
            Vec::new(),
        ];
        let mut encoded = std::collections::HashSet::new();
        for shape in [0, 1, 300, u32::MAX] {
            for key in &keys {
                let mut out = Vec::new();
                encode_key(shape, key, &mut out);
                assert_eq!(decode_key(&out), Some((shape, key.clone())));
                let (_, parts) = key_parts(&out).expect("decodes");
                for (part, encoded) in key.iter().zip(parts) {
                    let mut alone = Vec::new();
                    put_key_part(part, &mut alone);
                    assert_eq!(alone, encoded);
                }
                assert!(encoded.insert(out), "{shape} {key:?} collides");
            }
        }
    }

    #[test]
    fn malformed_blocks_do_not_decode() {
        let block = encode_entry(
            b"k",
            &Row::Found(Record {
                cells: vec![Ok(Value::String("abc".into())), Ok(Value::Double(0.1))],
                event_time: None,
            }),
            5,
            false,
        );
        let (_, good) = split_entry(&block).expect("splits");
        for end in 0..good.len() {
            // A block cut short either fails or, at a cell boundary, holds fewer cells.
            match decode_row(&good[..end], 2) {
                None => {}
                Some(Row::Found(r)) => assert!(r.cells.len() < 2, "{end}"),
                Some(Row::NotFound) => panic!("a found row read as not found"),
            }
        }
        assert_eq!(decode_row(&[FOUND, 0, 99], 1), None, "unknown tag");
        assert_eq!(decode_row(&[FOUND, 0, tag::STRING, 2, 0xff, 0xfe], 1), None);
        assert_eq!(decode_row(&[FOUND, 0, tag::INT64_LIST, 200], 1), None);
        assert_eq!(
            decode_key(&[0, 4]),
            None,
            "a part head that is neither kind"
        );
        assert_eq!(decode_key(&[0x80]), None, "a varint cut short");
        assert_eq!(split_entry(&[5, 1, 2]), None, "a key longer than its block");
    }
}
