//! The bytes of a tile in the store: a format byte, then each partial of the tile's series in
//! series order. Integers are LEB128 varints (signed ones zigzag), doubles their 8 IEEE bytes,
//! strings and sketches a length then their bytes. A tile that does not decode (written by
//! another layout, or damaged) is an error, never a wrong value.

use datasketches::hll::HllSketch;

use crate::{
    partial::{Kind, Partial, Scalar, Timed},
    spec::Series,
};

/// The first byte of every tile.
const FORMAT: u8 = 1;

/// Why a tile's bytes could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a tile does not decode: {0}")]
pub struct DecodeError(pub &'static str);

/// The bytes of a tile holding `partials` (one per series of the tile's size, in order).
pub fn encode(partials: &[Partial]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * partials.len() + 1);
    out.push(FORMAT);
    for p in partials {
        match p {
            Partial::Count(n) | Partial::SumInt(n) => put_i64(&mut out, *n),
            Partial::SumFixed(s) => put_i128(&mut out, *s),
            Partial::Mean { sum, count } => {
                put_i128(&mut out, *sum);
                put_i64(&mut out, *count);
            }
            Partial::Min(v) | Partial::Max(v) => put_opt_scalar(&mut out, v.as_ref()),
            Partial::Last(t) => match t {
                None => out.push(0),
                Some(t) => {
                    out.push(1);
                    put_i64(&mut out, t.time);
                    put_scalar(&mut out, &t.value);
                }
            },
            Partial::LastN(list) => {
                put_u64(&mut out, list.len() as u64);
                for t in list {
                    put_i64(&mut out, t.time);
                    put_scalar(&mut out, &t.value);
                }
            }
            Partial::Distinct(sketch) => {
                let bytes = sketch.serialize();
                put_u64(&mut out, bytes.len() as u64);
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}

/// Reads a tile of `series` (the series of its size, in order) from its bytes.
pub fn decode<'a>(
    bytes: &[u8],
    series: impl Iterator<Item = &'a Series>,
) -> Result<Vec<Partial>, DecodeError> {
    let mut tile = TileReader::new(bytes)?;
    let partials = series
        .map(|s| tile.read(Kind::of(s)))
        .collect::<Result<Vec<Partial>, DecodeError>>()?;
    tile.finish()?;
    Ok(partials)
}

/// A tile's partials read one at a time, in series order, each decoded ([`TileReader::read`])
/// or stepped over ([`TileReader::skip`]: a read wanting some series of a tile builds no other,
/// its sketches above all); [`TileReader::finish`] checks that nothing is left.
#[derive(Debug)]
pub struct TileReader<'a> {
    r: Reader<'a>,
}

impl<'a> TileReader<'a> {
    /// A reader of the tile `bytes`, its format checked.
    pub fn new(bytes: &'a [u8]) -> Result<TileReader<'a>, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.byte()? != FORMAT {
            return Err(DecodeError("unknown format"));
        }
        Ok(TileReader { r })
    }

    /// The next partial, of kind `kind`.
    pub fn read(&mut self, kind: Kind) -> Result<Partial, DecodeError> {
        let r = &mut self.r;
        Ok(match kind {
            Kind::Count => Partial::Count(r.i64()?),
            Kind::SumInt => Partial::SumInt(r.i64()?),
            Kind::SumFixed => Partial::SumFixed(r.i128()?),
            Kind::Mean => Partial::Mean {
                sum: r.i128()?,
                count: r.i64()?,
            },
            Kind::Min => Partial::Min(r.opt_scalar()?),
            Kind::Max => Partial::Max(r.opt_scalar()?),
            Kind::Last => Partial::Last(match r.byte()? {
                0 => None,
                _ => Some(Timed {
                    time: r.i64()?,
                    value: r.scalar()?,
                }),
            }),
            Kind::LastN => {
                let n = r.len()?;
                let mut list = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    list.push(Timed {
                        time: r.i64()?,
                        value: r.scalar()?,
                    });
                }
                Partial::LastN(list)
            }
            Kind::Distinct => {
                let n = r.len()?;
                let sketch = HllSketch::deserialize(r.take(n)?)
                    .map_err(|_| DecodeError("a damaged sketch"))?;
                Partial::Distinct(Box::new(sketch))
            }
        })
    }

    /// Steps over the next partial, of kind `kind`, checking only its framing.
    pub fn skip(&mut self, kind: Kind) -> Result<(), DecodeError> {
        let r = &mut self.r;
        match kind {
            Kind::Count | Kind::SumInt => {
                r.u64()?;
            }
            Kind::SumFixed => {
                r.take(16)?;
            }
            Kind::Mean => {
                r.take(16)?;
                r.u64()?;
            }
            Kind::Min | Kind::Max => {
                if r.byte()? != 0 {
                    r.at -= 1;
                    r.skip_scalar()?;
                }
            }
            Kind::Last => {
                if r.byte()? != 0 {
                    r.u64()?;
                    r.skip_scalar()?;
                }
            }
            Kind::LastN => {
                for _ in 0..r.len()? {
                    r.u64()?;
                    r.skip_scalar()?;
                }
            }
            Kind::Distinct => {
                let n = r.len()?;
                r.take(n)?;
            }
        }
        Ok(())
    }

    /// Checks that every partial was read or skipped.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.r.at != self.r.bytes.len() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(())
    }
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_i128(out: &mut Vec<u8>, v: i128) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_scalar(out: &mut Vec<u8>, v: &Scalar) {
    match v {
        Scalar::Int(i) => {
            out.push(1);
            put_i64(out, *i);
        }
        Scalar::Double(d) => {
            out.push(2);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Scalar::Str(s) => {
            out.push(3);
            put_u64(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Scalar::Bool(b) => out.push(if *b { 5 } else { 4 }),
        Scalar::Time(t) => {
            out.push(6);
            put_i64(out, *t);
        }
    }
}

fn put_opt_scalar(out: &mut Vec<u8>, v: Option<&Scalar>) {
    match v {
        None => out.push(0),
        Some(v) => put_scalar(out, v),
    }
}

#[derive(Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.at).ok_or(DecodeError("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError("truncated"))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError("truncated"))?;
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("a varint too long"))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u64()?).map_err(|_| DecodeError("a length too large"))?;
        if n > self.bytes.len() {
            return Err(DecodeError("a length beyond the tile"));
        }
        Ok(n)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn i128(&mut self) -> Result<i128, DecodeError> {
        let bytes: [u8; 16] = self
            .take(16)?
            .try_into()
            .map_err(|_| DecodeError("truncated"))?;
        Ok(i128::from_le_bytes(bytes))
    }

    fn scalar(&mut self) -> Result<Scalar, DecodeError> {
        match self.byte()? {
            1 => Ok(Scalar::Int(self.i64()?)),
            2 => {
                let bytes: [u8; 8] = self
                    .take(8)?
                    .try_into()
                    .map_err(|_| DecodeError("truncated"))?;
                Ok(Scalar::Double(f64::from_le_bytes(bytes)))
            }
            3 => {
                let n = self.len()?;
                let text = std::str::from_utf8(self.take(n)?)
                    .map_err(|_| DecodeError("a string that is not UTF-8"))?;
                Ok(Scalar::Str(text.to_owned()))
            }
            4 => Ok(Scalar::Bool(false)),
            5 => Ok(Scalar::Bool(true)),
            6 => Ok(Scalar::Time(self.i64()?)),
            _ => Err(DecodeError("an unknown value tag")),
        }
    }

    fn skip_scalar(&mut self) -> Result<(), DecodeError> {
        match self.byte()? {
            1 | 6 => {
                self.u64()?;
            }
            2 => {
                self.take(8)?;
            }
            3 => {
                let n = self.len()?;
                self.take(n)?;
            }
            4 | 5 => {}
            _ => return Err(DecodeError("an unknown value tag")),
        }
        Ok(())
    }

    fn opt_scalar(&mut self) -> Result<Option<Scalar>, DecodeError> {
        if self.bytes.get(self.at) == Some(&0) {
            self.at += 1;
            return Ok(None);
        }
        self.scalar().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::FeatureType;

    use super::*;
    use crate::spec::{Field, Op};

    #[test]
    fn tiles_round_trip_and_damage_is_an_error() {
        let field = |ty| {
            Some(Field {
                name: "f".into(),
                ty,
            })
        };
        let series = vec![
            Series {
                op: Op::Count,
                field: None,
                tile: 60_000,
            },
            Series {
                op: Op::Sum,
                field: field(FeatureType::Int64),
                tile: 60_000,
            },
            Series {
                op: Op::Mean,
                field: field(FeatureType::Double),
                tile: 60_000,
            },
            Series {
                op: Op::Max,
                field: field(FeatureType::String),
                tile: 60_000,
            },
            Series {
                op: Op::Min,
                field: field(FeatureType::Timestamp),
                tile: 60_000,
            },
            Series {
                op: Op::Last,
                field: field(FeatureType::Bool),
                tile: 60_000,
            },
            Series {
                op: Op::LastN(3),
                field: field(FeatureType::Double),
                tile: 60_000,
            },
            Series {
                op: Op::ApproxDistinct,
                field: field(FeatureType::String),
                tile: 60_000,
            },
        ];
        let mut partials: Vec<Partial> = series.iter().map(Partial::empty).collect();
        assert_eq!(
            decode(&encode(&partials), series.iter()),
            Ok(partials.clone())
        );
        let values = [
            None,
            Some(Scalar::Int(-42)),
            Some(Scalar::Double(2.75)),
            Some(Scalar::Str("zürich".into())),
            Some(Scalar::Time(-5)),
            Some(Scalar::Bool(true)),
            Some(Scalar::Double(f64::MIN_POSITIVE)),
            Some(Scalar::Str("m1".into())),
        ];
        for t in 0..4 {
            for ((p, s), v) in partials.iter_mut().zip(&series).zip(&values) {
                p.add(s, t, v.as_ref());
            }
        }
        let bytes = encode(&partials);
        assert_eq!(decode(&bytes, series.iter()), Ok(partials.clone()));
        // Any series stepped over, the others read as they were.
        for skipped in 0..series.len() {
            let mut tile = TileReader::new(&bytes).expect("a tile");
            for (i, (s, p)) in series.iter().zip(&partials).enumerate() {
                if i == skipped {
                    tile.skip(Kind::of(s)).expect("steps over");
                } else {
                    assert_eq!(tile.read(Kind::of(s)).as_ref(), Ok(p));
                }
            }
            assert_eq!(tile.finish(), Ok(()));
        }
        let skip_all = |bytes: &[u8]| {
            let mut tile = TileReader::new(bytes)?;
            for s in &series {
                tile.skip(Kind::of(s))?;
            }
            tile.finish()
        };
        assert_eq!(skip_all(&bytes), Ok(()));
        for cut in 0..bytes.len() {
            assert!(skip_all(&bytes[..cut]).is_err(), "{cut}");
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], series.iter()).is_err(), "{cut}");
        }
        assert_eq!(
            decode(&[9], series.iter()),
            Err(DecodeError("unknown format"))
        );
    }
}
