//! Reading the exposition text back: for `sluice stat` and for tests that
//! check what the daemon counted.

use std::collections::BTreeMap;

use crate::histogram::quantile;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses exposition text; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// The value of `name` whose labels include every pair of `labels`
    /// (summed when several match); 0 when none does.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The values of one label across the samples of `name`, e.g. every
    /// stream.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        v.dedup();
        v
    }

    /// A histogram's cumulative buckets `(le, count)`, ascending.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, u64)> {
        let bucket = format!("{name}_bucket");
        let mut b: Vec<(f64, u64)> = self
            .matching(&bucket, labels)
            .filter_map(|s| {
                let le = s.labels.get("le")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, s.value as u64))
            })
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        // Several series (streams) matched: one histogram of them all, the
        // counts of each bound summed (cumulative counts add up).
        b.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
        b
    }

    /// The quantile `q` of a histogram over what happened between `earlier`
    /// and this scrape (or since start when `earlier` has none of it).
    pub fn quantile_since(
        &self,
        earlier: &Scrape,
        name: &str,
        labels: &[(&str, &str)],
        q: f64,
    ) -> Option<f64> {
        let now = self.buckets(name, labels);
        let before = earlier.buckets(name, labels);
        let delta: Vec<(f64, u64)> = now
            .iter()
            .map(|&(le, c)| {
                let b = before.iter().find(|(l, _)| *l == le).map_or(0, |p| p.1);
                (le, c.saturating_sub(b))
            })
            .collect();
        quantile(&delta, q)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Histogram;
    use crate::metrics::exposition::{Exposition, Kind};

    #[test]
    fn reads_back_what_exposition_writes() {
        let h = Histogram::latency();
        h.observe(80);
        h.observe(900);
        let mut e = Exposition::default();
        e.family("a_total", Kind::Counter, "A.")
            .sample("a_total", &[("stream", "x,\"y\"")], 5)
            .sample("a_total", &[("stream", "z")], 2);
        e.family("lat", Kind::Histogram, "L.")
            .histogram("lat", &[("stream", "z")], &h.snapshot());
        e.family("plain", Kind::Gauge, "P.")
            .sample("plain", &[], 1.5);
        let s = Scrape::parse(&e.finish());
        assert_eq!(s.value("a_total", &[("stream", "x,\"y\"")]), 5.0);
        assert_eq!(s.value("a_total", &[]), 7.0);
        assert_eq!(s.value("plain", &[]), 1.5);
        assert_eq!(s.label_values("a_total", "stream"), vec!["x,\"y\"", "z"]);
        let q = s.quantile_since(&Scrape::default(), "lat", &[("stream", "z")], 0.99);
        assert_eq!(q, Some(0.001));
    }

    /// Without a stream label, a histogram's streams read as one: each
    /// bound's counts summed.
    #[test]
    fn a_histogram_of_several_series_reads_as_their_sum() {
        let (x, z) = (Histogram::latency(), Histogram::latency());
        x.observe(80);
        for _ in 0..3 {
            z.observe(4_000);
        }
        let mut e = Exposition::default();
        e.family("lat", Kind::Histogram, "L.")
            .histogram("lat", &[("stream", "x")], &x.snapshot())
            .histogram("lat", &[("stream", "z")], &z.snapshot());
        let s = Scrape::parse(&e.finish());
        let b = s.buckets("lat", &[]);
        assert_eq!(b.last(), Some(&(f64::INFINITY, 4)));
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "{b:?}");
        let none = Scrape::default();
        assert_eq!(s.quantile_since(&none, "lat", &[], 0.25), Some(0.0001));
        assert_eq!(s.quantile_since(&none, "lat", &[], 0.99), Some(0.005));
    }
}
