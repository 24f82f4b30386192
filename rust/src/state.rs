//! The contact state and its version 3 encoding (`engagement_index.core.state`), byte for byte.
//!
//! Only version 3 states written under the model's own layout are decoded here; anything else
//! (versions 1 and 2, another model's layout, bytes that are not a state) is left to the Python
//! core, which migrates it or words the error.

use crate::model::Model;

pub const ACTIVITY_DAYS: i64 = 96;
pub const ACTIVITY_MASK: u128 = (1u128 << 96) - 1;
pub const MS_PER_DAY: i64 = 86_400_000;
pub const MIN_MS: i64 = -62_135_596_800_000;
pub const MAX_MS: i64 = 253_402_300_799_999;
const DELTA: usize = 7;
const BITMAP: usize = 12;
const HEAD: usize = 1 + 1 + 8 + 4;
const MAX_COUNT: u64 = 0xFFFF_FFFF;

/// A cap window: (window number, events in it, decayed sum of their unit contributions).
pub type Window = (i64, i64, f64);
pub const EMPTY_WINDOW: Window = (0, 0, 0.0);

#[derive(Clone, Debug, Default)]
pub struct State {
    pub tenant: String,
    pub contact_id: String,
    pub clock: i64,
    pub values: Vec<f64>,
    pub first: i64,
    pub last: i64,
    pub counted: u64,
    pub days: u128,
    pub due: Option<i64>,
    /// stage positions, one per lifecycle
    pub stages: Vec<usize>,
    pub entered: Vec<i64>,
    pub markers: u64,
    pub marker_ms: Vec<Option<i64>>,
    pub trend: Vec<f64>,
    pub caps: Vec<[Window; 2]>,
}

fn read_delta(data: &[u8], pos: usize) -> i64 {
    let mut buf = [0u8; 8];
    buf[..DELTA].copy_from_slice(&data[pos..pos + DELTA]);
    i64::from_le_bytes(buf)
}

fn read_f64(data: &[u8], pos: usize) -> f64 {
    f64::from_le_bytes(data[pos..pos + 8].try_into().unwrap())
}

fn read_i64(data: &[u8], pos: usize) -> i64 {
    i64::from_le_bytes(data[pos..pos + 8].try_into().unwrap())
}

fn read_u32(data: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap())
}

fn read_u16(data: &[u8], pos: usize) -> u16 {
    u16::from_le_bytes(data[pos..pos + 2].try_into().unwrap())
}

fn body_size(model: &Model) -> usize {
    let markers = model.markers.len();
    3 * DELTA
        + BITMAP
        + 8 * model.names.len()
        + model.lifecycles.len() * (4 + DELTA)
        + if markers > 0 { 4 + markers * DELTA } else { 0 }
        + if model.trend.is_some() { 16 } else { 0 }
        + 2 * 20 * model.caps.len()
}

/// The state in ``data`` if it is a version 3 state of ``model``'s layout that the Python core
/// would decode without an error (None otherwise: the caller uses the Python core).
pub fn decode(data: &[u8], tenant: &str, contact_id: &str, model: &Model) -> Option<State> {
    let layout = &model.layout;
    let end = HEAD + layout.len();
    if data.len() != end + body_size(model) || data[0] != 3 || data[1] != 0 {
        return None;
    }
    if &data[HEAD..end] != layout.as_slice() {
        return None;
    }
    let clock = read_i64(data, 2);
    let counted = read_u32(data, 10) as u64;
    let mut pos = end;
    let first = clock - read_delta(data, pos);
    let last = clock - read_delta(data, pos + DELTA);
    let due_delta = read_delta(data, pos + 2 * DELTA);
    pos += 3 * DELTA;
    let mut bitmap = [0u8; 16];
    bitmap[..BITMAP].copy_from_slice(&data[pos..pos + BITMAP]);
    let days = u128::from_le_bytes(bitmap);
    pos += BITMAP;
    let values: Vec<f64> = (0..model.names.len())
        .map(|i| read_f64(data, pos + 8 * i))
        .collect();
    pos += 8 * model.names.len();
    if !(MIN_MS <= first && first <= last && last <= clock && clock <= MAX_MS) {
        return None;
    }
    let due = if due_delta != 0 {
        Some(clock + due_delta)
    } else {
        None
    };
    let mut stages = Vec::with_capacity(model.lifecycles.len());
    let mut entered = Vec::with_capacity(model.lifecycles.len());
    for _ in 0..model.lifecycles.len() {
        let id = read_u32(data, pos);
        let (_, s) = *model.stage_by_id.get(&id)?;
        stages.push(s);
        entered.push(clock - read_delta(data, pos + 4));
        pos += 4 + DELTA;
    }
    let mut markers = 0u64;
    let mut marker_ms = Vec::with_capacity(model.markers.len());
    if !model.markers.is_empty() {
        markers = read_u16(data, pos) as u64;
        let touched = read_u16(data, pos + 2);
        pos += 4;
        for i in 0..model.markers.len() {
            marker_ms.push(if touched >> i & 1 == 1 {
                Some(clock - read_delta(data, pos))
            } else {
                None
            });
            pos += DELTA;
        }
    }
    let mut trend = Vec::new();
    if model.trend.is_some() {
        trend.push(read_f64(data, pos));
        trend.push(read_f64(data, pos + 8));
        pos += 16;
    }
    let mut caps = Vec::with_capacity(model.caps.len());
    for _ in 0..model.caps.len() {
        let mut pair = [EMPTY_WINDOW; 2];
        for w in &mut pair {
            *w = (
                read_i64(data, pos),
                read_u32(data, pos + 8) as i64,
                read_f64(data, pos + 12),
            );
            pos += 20;
        }
        caps.push(pair);
    }
    if entered.iter().any(|&e| !(MIN_MS <= e && e <= clock)) {
        return None;
    }
    Some(State {
        tenant: tenant.to_owned(),
        contact_id: contact_id.to_owned(),
        clock,
        values,
        first,
        last,
        counted,
        days,
        due,
        stages,
        entered,
        markers,
        marker_ms,
        trend,
        caps,
    })
}

fn push_delta(out: &mut Vec<u8>, value: i64) -> Result<(), String> {
    if !(0..1i64 << 56).contains(&value) {
        return Err("a time delta does not fit in 7 bytes".into());
    }
    out.extend_from_slice(&value.to_le_bytes()[..DELTA]);
    Ok(())
}

/// ``encode_state`` of the Python core.
pub fn encode(state: &State, model: &Model) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(HEAD + model.layout.len() + body_size(model));
    let clock = state.clock;
    out.push(3);
    out.push(0);
    out.extend_from_slice(&clock.to_le_bytes());
    out.extend_from_slice(&(state.counted.min(MAX_COUNT) as u32).to_le_bytes());
    out.extend_from_slice(&model.layout);
    push_delta(&mut out, clock - state.first)?;
    push_delta(&mut out, clock - state.last)?;
    push_delta(&mut out, state.due.map_or(0, |d| d - clock))?;
    out.extend_from_slice(&state.days.to_le_bytes()[..BITMAP]);
    for v in &state.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (lc, (&s, &entered)) in model
        .lifecycles
        .iter()
        .zip(state.stages.iter().zip(state.entered.iter()))
    {
        out.extend_from_slice(&lc.stages[s].stage_id.to_le_bytes());
        push_delta(&mut out, clock - entered)?;
    }
    if !state.marker_ms.is_empty() {
        let mut touched = 0u16;
        for (i, at) in state.marker_ms.iter().enumerate() {
            if at.is_some() {
                touched |= 1 << i;
            }
        }
        if state.markers > 0xFFFF {
            return Err("marker bits do not fit in 16 bits".into());
        }
        out.extend_from_slice(&(state.markers as u16).to_le_bytes());
        out.extend_from_slice(&touched.to_le_bytes());
        for at in &state.marker_ms {
            push_delta(&mut out, at.map_or(0, |a| clock - a))?;
        }
    }
    for v in &state.trend {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for pair in &state.caps {
        for &(k, n, s) in pair {
            if !(0..=MAX_COUNT as i64).contains(&n) {
                return Err("a cap count does not fit in 32 bits".into());
            }
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    Ok(out)
}
