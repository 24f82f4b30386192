//! The replay's per-line work (`engagement_index.replay`): the parse and validation fast path
//! of `engagement_index.core.events.parse_event_fields`, the duplicate window of
//! `engagement_index.core.dedupe`, and JSON written as orjson writes it.
//!
//! The fast path takes only lines the Python parser accepts with the same fields; a line it
//! does not take (anything unusual, and every line the Python side would reject) goes back to
//! the Python side, which decides and words the reason, so the outcome is the Python core's
//! either way.

use blake2::digest::consts::U7;
use blake2::{Blake2b, Digest};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

use crate::state::{MAX_MS, MIN_MS};

/// The scoring fields of an event the fast path took.
pub struct Fields<'a> {
    pub event_id: Cow<'a, str>,
    pub tenant: Cow<'a, str>,
    pub contact_id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    pub ts: i64,
}

fn default_tenant<'a>() -> Cow<'a, str> {
    Cow::Borrowed("default")
}

/// The canonical envelope (`CanonicalEvent`'s fields, no others). A field of the wrong JSON
/// type, a repeated field or an unknown one fails the parse (the line goes to Python).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow, default = "default_tenant")]
    tenant: Cow<'a, str>,
    #[serde(borrow)]
    contact_id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    account_id: Option<Cow<'a, str>>,
    #[serde(default)]
    #[allow(dead_code)]
    properties: Option<Object>,
}

/// A JSON object whose content is parsed (strings decoded, so a lone surrogate escape fails
/// as it does for the Python parser) and dropped.
struct Object;
/// Any JSON value, parsed the same way and dropped.
struct Checked;

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Checked, E> {
        if v.is_finite() {
            Ok(Checked)
        } else {
            Err(E::custom("not finite"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Cow<'de, str>, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object, A::Error> {
        CheckedVisitor.visit_map(map).map(|Checked| Object)
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Object, D::Error> {
        d.deserialize_map(ObjectVisitor)
    }
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `TENANT_PATTERN`: `[A-Za-z0-9_.-]{1,64}`.
fn good_tenant(t: &str) -> bool {
    (1..=64).contains(&t.len()) && t.bytes().all(|b| is_name_char(b) || b == b'.')
}

/// `EVENT_TYPE_PATTERN`: `[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}`.
fn good_type(t: &str) -> bool {
    let Some((channel, action)) = t.split_once('.') else {
        return false;
    };
    let part = |p: &str| (1..=64).contains(&p.len()) && p.bytes().all(is_name_char);
    part(channel) && part(action)
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut n = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(c - b'0');
    }
    Some(n)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch ms of the common timestamp shapes that `parse_timestamp_ms` parses by
/// `datetime.fromisoformat` (`YYYY-MM-DDTHH:MM:SS`, no fraction or 3 or 6 digits, `Z` or
/// `+HH:MM`), floored; None for anything else (the Python side decides).
fn timestamp_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let y = digits(&b[0..4])?;
    let mo = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    let hh = digits(&b[11..13])?;
    let mi = digits(&b[14..16])?;
    let ss = digits(&b[17..19])?;
    let mut pos = 19;
    let mut micros = 0i64;
    if b[pos] == b'.' {
        let start = pos + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        micros = match end - start {
            3 => digits(&b[start..end])? * 1000,
            6 => digits(&b[start..end])?,
            _ => return None,
        };
        pos = end;
    }
    let offset_min = match &b[pos..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = digits(&[*oh1, *oh2])?;
            let om = digits(&[*om1, *om2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            if *sign == b'-' {
                -(oh * 60 + om)
            } else {
                oh * 60 + om
            }
        }
        _ => return None,
    };
    if hh > 23 || mi > 59 || ss > 59 || y == 0 || !(1..=12).contains(&mo) {
        return None;
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let dim = [
        0,
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d < 1 || d > dim[mo as usize] {
        return None;
    }
    let seconds = days_from_civil(y, mo, d) * 86_400 + (hh * 60 + mi - offset_min) * 60 + ss;
    let ms = (seconds * 1_000_000 + micros).div_euclid(1000);
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

/// The event's fields if the line is plainly valid (as `_fast_fields` decides), else None.
pub fn fast_fields(line: &[u8]) -> Option<Fields<'_>> {
    let text = std::str::from_utf8(line).ok()?;
    let e: Envelope = serde_json::from_str(text).ok()?;
    let id_len = e.event_id.chars().count();
    let contact_len = e.contact_id.chars().count();
    if !(1..=128).contains(&id_len) || !(1..=256).contains(&contact_len) {
        return None;
    }
    if !good_tenant(&e.tenant) || !good_type(&e.event_type) {
        return None;
    }
    let ts = timestamp_ms(&e.timestamp)?;
    Some(Fields {
        event_id: e.event_id,
        tenant: e.tenant,
        contact_id: e.contact_id,
        event_type: e.event_type,
        ts,
    })
}

// ------------------------------------------------------------------------ duplicate window
pub const DIGEST_BYTES: usize = 7;
/// `core.dedupe.MAX_IDS`
pub const MAX_IDS: usize = 4096;

/// `event_id_digest`: the 7-byte blake2b digest of an event id.
pub fn digest(event_id: &str) -> [u8; DIGEST_BYTES] {
    let mut h = Blake2b::<U7>::new();
    h.update(event_id.as_bytes());
    h.finalize().into()
}

/// `core.dedupe.SeenIds`: digests and their arrivals, in arrival order.
#[derive(Default, Clone)]
pub struct Seen {
    pub digests: Vec<[u8; DIGEST_BYTES]>,
    pub arrivals: Vec<i64>,
}

impl Seen {
    /// `core.dedupe.admit`, in place: false (and no change) for a duplicate.
    pub fn admit(&mut self, digest: [u8; DIGEST_BYTES], arrival: i64, window: i64) -> bool {
        let newest = match self.arrivals.last() {
            Some(&last) if last >= arrival => last,
            _ => arrival,
        };
        let cutoff = newest - window;
        if let Some(found) = self.digests.iter().position(|d| *d == digest) {
            if self.arrivals[found] >= cutoff {
                return false;
            }
            self.digests.remove(found);
            self.arrivals.remove(found);
        }
        let drop = self.arrivals.partition_point(|&a| a < cutoff);
        if drop > 0 {
            self.digests.drain(..drop);
            self.arrivals.drain(..drop);
        }
        let kept_at = if arrival < cutoff { cutoff } else { arrival };
        let at = self.arrivals.partition_point(|&a| a <= kept_at);
        self.digests.insert(at, digest);
        self.arrivals.insert(at, kept_at);
        let over = self.arrivals.len().saturating_sub(MAX_IDS);
        if over > 0 {
            self.digests.drain(..over);
            self.arrivals.drain(..over);
        }
        true
    }
}

// ------------------------------------------------------------------------ JSON as orjson writes it
/// A JSON string, escaped as orjson escapes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A float as orjson writes it: the shortest digits that read back to it, in positional
/// notation for decimal exponents -5 to 15 (with `.0` for an integral value), else as
/// `d.ddde+X` / `d.ddde-X`; `null` for NaN and infinities.
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    use std::fmt::Write;
    if !v.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut sci = StackText::default();
    write!(sci, "{v:e}").expect("a float's digits fit"); // shortest round-trip digits: "-1.2345e-7"
    let (mantissa, exp) = sci.as_str().split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let mut digit_buf = [0u8; 32];
    let mut n = 0;
    for &b in mantissa.as_bytes() {
        if b != b'.' {
            digit_buf[n] = b;
            n += 1;
        }
    }
    let digits = &digit_buf[..n];
    if negative {
        out.push(b'-');
    }
    if (-5..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits);
                out.extend(std::iter::repeat_n(b'0', int_len - digits.len()));
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_len..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits);
        }
    } else {
        out.extend_from_slice(mantissa.as_bytes());
        out.push(b'e');
        out.push(if exp > 0 { b'+' } else { b'-' });
        let mut exp_text = StackText::default();
        write!(exp_text, "{}", exp.unsigned_abs()).expect("an exponent fits");
        out.extend_from_slice(exp_text.as_str().as_bytes());
    }
}

/// Text formatted on the stack (a float's shortest digits in `{:e}` form are at most 24
/// bytes: `-2.2250738585072014e-308`), so that writing a float allocates nothing.
#[derive(Default)]
struct StackText {
    buf: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("formatted text")
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
