//! The `contacts` table value of the worker (`engagement_index.stream.stored`), version 2:
//! delivery bookkeeping around the core state, read and written byte for byte.
//!
//! ```text
//! version:u8=2  published_index:f32  n:u8  n x (source:u16, offset:varint)
//! count:u32  count x digest[7]  count x arrival:i64  core-state bytes
//! ```
//!
//! Version 1 (sources by position) and version 3 (an account membership) are left to the
//! Python side, which decodes them or words the error.

use crate::replay::{Seen, DIGEST_BYTES};

pub const VERSION: u8 = 2;
const HEAD: usize = 1 + 4 + 1;

/// A decoded version 2 value; `state` is where the core-state bytes start.
pub struct Stored {
    pub published: f32,
    /// (source id, last applied offset), as stored (sorted by source)
    pub offsets: Vec<(u16, u64)>,
    pub seen: Seen,
    pub state: usize,
}

fn varint(data: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut result = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *data.get(pos)?;
        pos += 1;
        if shift >= 64 {
            return None; // wider than an offset: the Python side words it
        }
        result |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some((result, pos));
        }
        shift += 7;
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Where the core-state bytes of a version 2 value start (the Python side's
/// `state_offset`), walking over the offsets and the duplicate window without decoding them;
/// None for anything else.
pub fn state_offset(data: &[u8]) -> Option<usize> {
    if data.len() < HEAD || data[0] != VERSION {
        return None;
    }
    let mut pos = HEAD;
    for _ in 0..data[5] {
        data.get(pos..pos + 2)?;
        pos = varint(data, pos + 2)?.1;
    }
    let n = u32::from_le_bytes(data.get(pos..pos + 4)?.try_into().ok()?) as usize;
    let end = (pos + 4).checked_add(n.checked_mul(DIGEST_BYTES + 8)?)?;
    (end <= data.len()).then_some(end)
}

/// `StoredContact.decode` of a version 2 value; None for anything else.
pub fn decode(data: &[u8]) -> Option<Stored> {
    if data.len() < HEAD || data[0] != VERSION {
        return None;
    }
    let published = f32::from_le_bytes(data[1..5].try_into().ok()?);
    let count = data[5] as usize;
    let mut pos = HEAD;
    let mut offsets = Vec::with_capacity(count);
    for _ in 0..count {
        let source = u16::from_le_bytes(data.get(pos..pos + 2)?.try_into().ok()?);
        let (offset, next) = varint(data, pos + 2)?;
        pos = next;
        // a repeated source keeps the last one, as the Python dict does
        match offsets.iter_mut().find(|(s, _)| *s == source) {
            Some(slot) => *slot = (source, offset),
            None => offsets.push((source, offset)),
        }
    }
    let n = u32::from_le_bytes(data.get(pos..pos + 4)?.try_into().ok()?) as usize;
    pos += 4;
    let end = pos.checked_add(n.checked_mul(DIGEST_BYTES + 8)?)?;
    if end > data.len() {
        return None;
    }
    let mut seen = Seen::default();
    seen.digests.reserve(n + 1);
    seen.arrivals.reserve(n + 1);
    for i in 0..n {
        let at = pos + i * DIGEST_BYTES;
        seen.digests
            .push(data[at..at + DIGEST_BYTES].try_into().ok()?);
    }
    let arrivals = pos + n * DIGEST_BYTES;
    for i in 0..n {
        let at = arrivals + i * 8;
        seen.arrivals
            .push(i64::from_le_bytes(data[at..at + 8].try_into().ok()?));
    }
    Some(Stored {
        published,
        offsets,
        seen,
        state: end,
    })
}

/// `StoredContact.encode` of a value without an account; returns the value and where its
/// core-state bytes start. `published` is rounded to f32 as `struct.pack("<f")` does.
pub fn encode(
    published: f64,
    offsets: &mut [(u16, u64)],
    seen: &Seen,
    state: &[u8],
) -> Result<(Vec<u8>, usize), String> {
    let narrow = published as f32;
    if narrow.is_infinite() && !published.is_infinite() {
        return Err("float too large to pack with f format".into());
    }
    if offsets.len() > 255 {
        return Err("more than 255 sources in one stored value".into());
    }
    offsets.sort_unstable_by_key(|&(source, _)| source);
    let n = seen.arrivals.len();
    let mut out = Vec::with_capacity(HEAD + offsets.len() * 6 + 4 + n * 15 + state.len());
    out.push(VERSION);
    out.extend_from_slice(&narrow.to_le_bytes());
    out.push(offsets.len() as u8);
    for &(source, offset) in offsets.iter() {
        out.extend_from_slice(&source.to_le_bytes());
        put_varint(&mut out, offset);
    }
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for d in &seen.digests {
        out.extend_from_slice(d);
    }
    for a in &seen.arrivals {
        out.extend_from_slice(&a.to_le_bytes());
    }
    let at = out.len();
    out.extend_from_slice(state);
    Ok((out, at))
}
