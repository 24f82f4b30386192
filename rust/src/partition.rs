//! The canonical partition of a contact key (`engagement_index.core.partitioning`): murmur2
//! with Kafka's seed, as the Java client partitions keys.

const SEED: u32 = 0x9747_B28C;
const M: u32 = 0x5BD1_E995;

/// 32-bit MurmurHash2 of `data` with Kafka's seed (`Utils.murmur2` of the Java client).
pub fn murmur2(data: &[u8]) -> u32 {
    let length = data.len();
    let mut h = SEED ^ length as u32;
    let whole = length - length % 4;
    for chunk in data[..whole].chunks_exact(4) {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = length % 4;
    if tail == 3 {
        h ^= u32::from(data[whole + 2]) << 16;
    }
    if tail >= 2 {
        h ^= u32::from(data[whole + 1]) << 8;
    }
    if tail >= 1 {
        h ^= u32::from(data[whole]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// `(murmur2(key) & 0x7fffffff) % partitions`; `partitions` is at least 1.
pub fn canonical_partition(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7FFF_FFFF) as usize % partitions
}
