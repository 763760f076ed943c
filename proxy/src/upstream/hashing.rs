//! Consistent hashing as Envoy does it, so that a request's hash lands on the same host behind
//! skiff as behind Envoy: the ketama ring of `RING_HASH` and the lookup table of `MAGLEV`, built
//! from the same host keys (the address, `ip:port`, or the endpoint's `envoy.lb` `hash_key`)
//! with the same hash functions (xxHash64 with seed 0, or libstdc++'s MurmurHash2).

use xxhash_rust::xxh64::xxh64;

/// xxHash64 with seed 0 (Envoy's `HashUtil::xxHash64`).
pub fn xxhash(data: &[u8]) -> u64 {
    xxh64(data, 0)
}

/// xxHash64 of several parts, each hashed with the hash of those before as its seed (Envoy's
/// hash of a header's values).
pub fn xxhash_parts(parts: &[&[u8]]) -> u64 {
    if parts.is_empty() {
        return xxhash(b"");
    }
    parts.iter().fold(0, |seed, p| xxh64(p, seed))
}

/// libstdc++'s `std::hash<std::string>` on 64-bit (MurmurHash2, 64-bit variant) with Envoy's
/// seed: the ring's `MURMUR_HASH_2`.
pub fn murmur2(data: &[u8]) -> u64 {
    const SEED: u64 = 0xc70f_6907;
    const MUL: u64 = (0xc6a4_a793 << 32) + 0x5bd1_e995;
    fn shift_mix(v: u64) -> u64 {
        v ^ (v >> 47)
    }
    let mut hash = SEED ^ (data.len() as u64).wrapping_mul(MUL);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let d = shift_mix(u64::from_le_bytes(word).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let d = rest
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) + u64::from(*b));
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}

/// One host to place: its key, its weight normalized over the hosts placed (they sum to 1),
/// and what the table gives back for it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub key: String,
    pub weight: f64,
    pub index: usize,
}

/// The hosts with their weights normalized as Envoy's `normalizeHostWeights`, and the smallest
/// and largest normalized weight.
pub fn normalize(hosts: impl IntoIterator<Item = (String, u32, usize)>) -> (Vec<Placed>, f64, f64) {
    let hosts: Vec<(String, u32, usize)> = hosts.into_iter().collect();
    let sum: u64 = hosts.iter().map(|(_, w, _)| u64::from(*w)).sum();
    placed(
        hosts
            .into_iter()
            .map(|(key, w, index)| (key, f64::from(w) / sum.max(1) as f64, index)),
    )
}

/// Hosts with weights already normalized, and the smallest and largest of them.
pub fn placed(hosts: impl IntoIterator<Item = (String, f64, usize)>) -> (Vec<Placed>, f64, f64) {
    let (mut min, mut max) = (1.0f64, 0.0f64);
    let placed = hosts
        .into_iter()
        .map(|(key, weight, index)| {
            min = min.min(weight);
            max = max.max(weight);
            Placed { key, weight, index }
        })
        .collect();
    (placed, min, max)
}

/// Envoy's ketama ring: each host hashed `scale × weight` times (`<key>_<n>`), sorted.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    entries: Vec<(u64, u32)>,
}

impl Ring {
    /// The ring of `hosts`, between `min_ring` and `max_ring` entries, hashed with MurmurHash2
    /// when `murmur`, else xxHash.
    pub fn new(
        hosts: &[Placed],
        min_weight: f64,
        min_ring: u64,
        max_ring: u64,
        murmur: bool,
    ) -> Self {
        if hosts.is_empty() {
            return Ring::default();
        }
        // The least weighted host gets a whole number of entries, within the maximum.
        let scale = ((min_weight * min_ring as f64).ceil() / min_weight).min(max_ring as f64);
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut key = String::new();
        for h in hosts {
            target += scale * h.weight;
            let mut i = 0u64;
            while current < target {
                key.clear();
                key.push_str(&h.key);
                key.push('_');
                key.push_str(&i.to_string());
                let hash = if murmur {
                    murmur2(key.as_bytes())
                } else {
                    xxhash(key.as_bytes())
                };
                entries.push((hash, h.index as u32));
                i += 1;
                current += 1.0;
            }
        }
        entries.sort_by_key(|e| e.0);
        Ring { entries }
    }

    /// The host for `hash`; a retry's `attempt` (over 0) moves that many entries on, as Envoy's
    /// does for a host its retry predicate rejected.
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<usize> {
        let n = self.entries.len() as i64;
        if n == 0 {
            return None;
        }
        // Envoy's search (ketama's), kept as it is: where it lands is where Envoy's lands.
        let (mut low, mut high) = (0i64, n);
        let mut mid;
        loop {
            mid = (low + high) / 2;
            if mid == n {
                mid = 0;
                break;
            }
            let at = self.entries[mid as usize].0;
            let before = if mid == 0 {
                0
            } else {
                self.entries[mid as usize - 1].0
            };
            if hash <= at && hash > before {
                break;
            }
            if at < hash {
                low = mid + 1;
            } else {
                high = mid - 1;
            }
            if low > high {
                mid = 0;
                break;
            }
        }
        if attempt > 0 {
            mid = (mid + i64::from(attempt)) % n;
        }
        Some(self.entries[mid as usize].1 as usize)
    }
}

/// Maglev's lookup table (Envoy's): each host fills the slots of its permutation in turn, as
/// often as its weight against the largest weight allows.
#[derive(Debug, Clone, Default)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// The table of `table_size` slots (a prime) over `hosts`.
    pub fn new(hosts: &[Placed], max_weight: f64, table_size: u64) -> Self {
        if hosts.is_empty() || table_size < 2 {
            return Maglev::default();
        }
        struct Entry {
            index: u32,
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let mut entries: Vec<Entry> = hosts
            .iter()
            .map(|h| Entry {
                index: h.index as u32,
                offset: xxh64(h.key.as_bytes(), 0) % table_size,
                skip: xxh64(h.key.as_bytes(), 1) % (table_size - 1) + 1,
                weight: h.weight,
                target: 0.0,
                next: 0,
            })
            .collect();
        let mut table = vec![u32::MAX; table_size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < table_size {
            for e in entries.iter_mut() {
                if filled >= table_size {
                    break;
                }
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                let mut slot = (e.offset + e.skip * e.next) % table_size;
                while table[slot as usize] != u32::MAX {
                    e.next += 1;
                    slot = (e.offset + e.skip * e.next) % table_size;
                }
                table[slot as usize] = e.index;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev { table }
    }

    /// The host for `hash`; a retry's `attempt` (over 0) changes the hash as Envoy's does.
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let hash = if attempt > 0 {
            hash ^ (u64::MAX - u64::from(attempt) + 1)
        } else {
            hash
        };
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_functions_give_the_reference_values() {
        // xxHash64's published value for the empty input.
        assert_eq!(xxhash(b""), 0xef46_db37_51d8_e999);
        assert_eq!(xxhash_parts(&[b"abc"]), xxhash(b"abc"));
        assert_eq!(xxhash_parts(&[b"ab", b"c"]), xxh64(b"c", xxhash(b"ab")));
        // libstdc++'s std::hash<std::string> of "" with Envoy's seed, computed by hand from
        // the algorithm: len 0 leaves seed ^ 0, then the final mixes.
        let mul: u64 = (0xc6a4_a793 << 32) + 0x5bd1_e995;
        let mix = |v: u64| v ^ (v >> 47);
        assert_eq!(murmur2(b""), mix(mix(0xc70f_6907).wrapping_mul(mul)));
    }

    fn hosts(n: usize) -> Vec<Placed> {
        normalize((0..n).map(|i| (format!("127.0.0.1:{}", 8000 + i), 1, i))).0
    }

    #[test]
    fn a_ring_of_equal_hosts_has_the_minimum_size_and_wraps_around() {
        let h = hosts(3);
        let r = Ring::new(&h, 1.0 / 3.0, 1024, 8 << 20, false);
        assert_eq!(r.entries.len(), 1026);
        // Past the last entry: the first.
        let first = r.entries[0].1 as usize;
        assert_eq!(r.pick(u64::MAX, 0), Some(first));
        assert_eq!(r.pick(0, 0), Some(first));
        // An entry's own hash picks it.
        for &(hash, i) in r.entries.iter().step_by(97) {
            assert_eq!(r.pick(hash, 0), Some(i as usize));
        }
    }

    #[test]
    fn maglev_fills_its_table_by_weight() {
        let h = normalize([("a:1".to_string(), 1, 0), ("b:1".to_string(), 3, 1)]);
        let m = Maglev::new(&h.0, h.2, 65537);
        let b = m.table.iter().filter(|&&i| i == 1).count();
        assert!((b as f64 / 65537.0 - 0.75).abs() < 0.01, "{b}");
        assert!(m.table.iter().all(|&i| i < 2));
    }
}
