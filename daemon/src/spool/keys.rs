//! The request keys of the idempotence table: for each publish request
//! sent with an idempotency key (HTTP `Idempotency-Key`), where its records
//! were stored and a hash of its body, so that a retry is answered with
//! the original offsets and stores nothing, and a retry with another body
//! is refused.
//!
//! The key is durable in the same commit as the request's records (it is
//! written in the first record's key block, see [`super::record`]), so a
//! crash between the fdatasync and the answer loses neither: the table is
//! rebuilt at open, like the producers' seqs, from the newest idempotence
//! snapshot and the records after it.
//!
//! Keys are kept for a window (`spool.idempotency_window`, 24 h by
//! default: a client retries within minutes, and a day covers an outage
//! of its own) and at most `spool.idempotency_keys` per stream; the oldest
//! go first. A retry after its key went is stored again: the window is
//! the promise, as with Stripe's keys and SQS's deduplication interval.

use std::collections::{HashMap, VecDeque};

use super::record::RequestKey;

/// Where a keyed request's records are, and what its body was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    /// Offset of the request's first record; the rest follow it.
    pub first: u64,
    pub count: u32,
    /// SHA-256 of the request's body.
    pub hash: [u8; 32],
    /// The first record's timestamp: the key's age is counted from it.
    pub at_us: u64,
    /// The producer and seq of the first record.
    pub producer: u64,
    pub seq: u64,
}

impl KeyEntry {
    /// The entry of `key`, whose request's first record is at `first`.
    pub fn new(first: u64, key: &RequestKey, producer: u64, seq: u64, at_us: u64) -> KeyEntry {
        KeyEntry {
            first,
            count: key.count,
            hash: key.hash,
            at_us,
            producer,
            seq,
        }
    }
}

/// How many keys a stream keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    pub window_us: u64,
    pub max: usize,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            window_us: 24 * 3600 * 1_000_000,
            max: 1_000_000,
        }
    }
}

/// The keys of one stream, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    limits: KeyLimits,
    map: HashMap<String, KeyEntry>,
    /// Keys in the order they were stored, with their time: what expires
    /// next is at the front. A key stored again (after it expired) leaves
    /// a stale item here, skipped when it comes up.
    order: VecDeque<(u64, String)>,
}

impl Keys {
    pub fn new(limits: KeyLimits) -> Keys {
        Keys {
            limits,
            ..Keys::default()
        }
    }

    /// The entry of `key`, unless it is older than the window at `now_us`.
    pub fn get(&self, key: &str, now_us: u64) -> Option<&KeyEntry> {
        self.map
            .get(key)
            .filter(|e| now_us.saturating_sub(e.at_us) <= self.limits.window_us)
    }

    /// Records `key` (replacing an expired entry), then lets the oldest go
    /// past the window or the count.
    pub fn insert(&mut self, key: String, entry: KeyEntry) {
        // Met again (a replay over records a snapshot already holds).
        if self.map.get(&key) == Some(&entry) {
            return;
        }
        self.order.push_back((entry.at_us, key.clone()));
        self.map.insert(key, entry);
        self.expire(entry.at_us);
    }

    /// Lets go of keys older than the window at `now_us`, and of the
    /// oldest while there are more than the most kept.
    pub fn expire(&mut self, now_us: u64) {
        while let Some((at, key)) = self.order.front() {
            let current = self.map.get(key).is_some_and(|e| e.at_us == *at);
            let old = now_us.saturating_sub(*at) > self.limits.window_us;
            if current && !old && self.map.len() <= self.limits.max {
                break;
            }
            if current {
                self.map.remove(key);
            }
            self.order.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every key kept, oldest first (what a snapshot writes).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &KeyEntry)> {
        self.order.iter().filter_map(|(at, k)| {
            let e = self.map.get(k)?;
            (e.at_us == *at).then_some((k.as_str(), e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: u64, at_us: u64) -> KeyEntry {
        KeyEntry {
            first,
            count: 1,
            hash: [0; 32],
            at_us,
            producer: 1,
            seq: first,
        }
    }

    #[test]
    fn keys_expire_by_age_and_by_count_oldest_first() {
        let mut k = Keys::new(KeyLimits {
            window_us: 100,
            max: 3,
        });
        for i in 0..3 {
            k.insert(format!("k{i}"), entry(i, 10 * i));
        }
        assert_eq!(k.get("k0", 50).map(|e| e.first), Some(0));
        // k0, stored at 0, is past the window of 100 at 105.
        assert!(k.get("k0", 105).is_none());
        // A fourth key: the oldest goes by count.
        k.insert("k3".into(), entry(3, 30));
        assert_eq!(k.len(), 3);
        assert!(k.get("k0", 30).is_none());
        let kept: Vec<&str> = k.entries().map(|(s, _)| s).collect();
        assert_eq!(kept, ["k1", "k2", "k3"]);
        // Stored again after it expired: one entry, the new one.
        k.insert("k1".into(), entry(9, 200));
        k.expire(200);
        let kept: Vec<(&str, u64)> = k.entries().map(|(s, e)| (s, e.first)).collect();
        assert_eq!(kept, [("k1", 9)]);
    }
}
