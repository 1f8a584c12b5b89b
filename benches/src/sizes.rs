//! Message sizes: one fixed size (`--size`) or a weighted mix
//! (`--sizes 64:50,1024:40,65536:10`) drawn per message from a seeded
//! generator, so that a run with the same `--seed` offers the same sizes in
//! the same order (per producer in closed loop, overall in open loop).

use bytes::Bytes;
use serde::Serialize;

/// One entry of a size mix: `bytes` with relative `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SizeWeight {
    pub bytes: usize,
    pub weight: u32,
}

/// Parses `64:50,1024:40,65536:10` (size:weight, weights relative; a bare
/// size has weight 1).
pub fn parse_mix(s: &str) -> Result<Vec<SizeWeight>, String> {
    let mut mix = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (size, weight) = part.split_once(':').unwrap_or((part, "1"));
        let bytes = size
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("{part:?}: the size must be a whole number of bytes"))?;
        let weight = weight
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
        mix.push(SizeWeight { bytes, weight });
    }
    if mix.is_empty() {
        return Err("expected size:weight pairs, e.g. 64:50,1024:40,65536:10".into());
    }
    if mix.iter().all(|w| w.weight == 0) {
        return Err("at least one weight must be more than 0".into());
    }
    Ok(mix)
}

/// The mix's expected mean payload bytes.
pub fn mean_of(mix: &[SizeWeight]) -> f64 {
    let total: f64 = mix.iter().map(|w| f64::from(w.weight)).sum();
    mix.iter()
        .map(|w| w.bytes as f64 * f64::from(w.weight))
        .sum::<f64>()
        / total.max(1.0)
}

/// splitmix64: tiny, and ours, so that a seed gives the same sizes in every
/// build (a library generator may change its stream between versions).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The payloads to send: one buffer per size (clones share it), and a
/// cumulative weight table to pick from.
#[derive(Debug, Clone)]
pub struct Payloads {
    bufs: Vec<Bytes>,
    /// Running sums of the weights; the last is the total.
    cumulative: Vec<u64>,
}

impl Payloads {
    /// Every message `size` bytes.
    pub fn fixed(size: usize) -> Payloads {
        Payloads {
            bufs: vec![Bytes::from(vec![0x42u8; size])],
            cumulative: vec![1],
        }
    }

    pub fn mix(mix: &[SizeWeight]) -> Payloads {
        let mut sum = 0u64;
        let mut bufs = Vec::new();
        let mut cumulative = Vec::new();
        for w in mix.iter().filter(|w| w.weight > 0) {
            sum += u64::from(w.weight);
            bufs.push(Bytes::from(vec![0x42u8; w.bytes]));
            cumulative.push(sum);
        }
        Payloads { bufs, cumulative }
    }

    /// The next message's payload.
    pub fn pick(&self, rng: &mut Rng) -> Bytes {
        if self.bufs.len() == 1 {
            return self.bufs[0].clone();
        }
        let total = *self.cumulative.last().expect("a non-empty mix");
        // The modulo bias is below 2^-32 for any weights that fit in u32s.
        let x = rng.next_u64() % total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.bufs[i].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_reject() {
        assert_eq!(
            parse_mix("64:50, 1024:40,65536").unwrap(),
            vec![
                SizeWeight {
                    bytes: 64,
                    weight: 50
                },
                SizeWeight {
                    bytes: 1024,
                    weight: 40
                },
                SizeWeight {
                    bytes: 65536,
                    weight: 1
                },
            ]
        );
        assert!(parse_mix("").is_err());
        assert!(parse_mix("64:x").is_err());
        assert!(parse_mix("-1:3").is_err());
        assert!(parse_mix("64:0,128:0").is_err());
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix = parse_mix("10:1,20:3,30:0").unwrap();
        let p = Payloads::mix(&mix);
        let mut rng = Rng::new(7);
        let n = 40_000;
        let twenties = (0..n).filter(|_| p.pick(&mut rng).len() == 20).count();
        let share = twenties as f64 / n as f64;
        assert!((0.73..0.77).contains(&share), "share of 20 B: {share}");
        // Weight 0 is never drawn.
        assert!((0..1000).all(|_| p.pick(&mut rng).len() != 30));
        assert_eq!(mean_of(&mix), 17.5);
        // The same seed, the same sizes.
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        assert!((0..100).all(|_| p.pick(&mut a).len() == p.pick(&mut b).len()));
    }
}
