//! The segment index's keys of a contact (`engagement_index.stream.segments`,
//! `SegmentIndex._keys`): per lifecycle, three keys under the contact's stage, by contact id,
//! by the index at the contact's clock and by its last event time.

use crate::model::Model;

const SEP: u8 = 0x1f;
/// `segment_query._TIME_OFFSET`: event times sort as unsigned big-endian numbers
const TIME_OFFSET: u64 = 1 << 63;

/// What the index holds of a contact without an account (`segments.Projection`).
pub struct Projection<'a> {
    pub stages: &'a [usize],
    pub index: f64,
    pub last_event_ms: i64,
}

/// The index keys of `key` (tenant, 0x1f, contact id) in `partition` for `p`, in the order
/// of `SegmentIndex._keys`. A key without the separator is all tenant, as `bytes.partition`
/// reads it.
pub fn keys(model: &Model, partition: u16, key: &[u8], p: &Projection<'_>) -> Vec<Vec<u8>> {
    let (tenant, contact) = match key.iter().position(|&b| b == SEP) {
        Some(at) => (&key[..at], &key[at + 1..]),
        None => (key, &key[key.len()..]),
    };
    // `sort_value`: `+ 0.0` turns -0.0 into 0.0, as the Python side does
    let by_index = (p.index + 0.0).to_be_bytes();
    let by_time = (p.last_event_ms as u64 ^ TIME_OFFSET).to_be_bytes();
    let mut out = Vec::with_capacity(3 * p.stages.len());
    for (lifecycle, &stage) in model.lifecycles.iter().zip(p.stages) {
        let mut base = Vec::with_capacity(64);
        base.extend_from_slice(&partition.to_be_bytes());
        base.extend_from_slice(tenant);
        base.push(SEP);
        base.extend_from_slice(lifecycle.name.as_bytes());
        base.push(SEP);
        base.extend_from_slice(lifecycle.stages[stage].name.as_bytes());
        base.push(SEP);
        for (order, sort) in [(b'c', &[][..]), (b'i', &by_index[..]), (b'a', &by_time[..])] {
            let mut k = Vec::with_capacity(base.len() + 1 + sort.len() + contact.len());
            k.extend_from_slice(&base);
            k.push(order);
            k.extend_from_slice(sort);
            k.extend_from_slice(contact);
            out.push(k);
        }
    }
    out
}
