//! Writes the Prometheus text exposition format (version 0.0.4): families
//! with HELP and TYPE, samples with labels, histograms with cumulative
//! buckets. A family's samples are written together, as the format needs.

use std::fmt::Write;

use crate::histogram::Snapshot;

use super::number::{float, SampleValue};

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl SampleValue,
    ) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
        self
    }

    /// A histogram's `_bucket`, `_sum` and `_count` samples.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Snapshot) -> &mut Self {
        for (bound, count) in &h.buckets {
            let le = float(*bound);
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {count}");
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
    for (k, v) in all {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"");
        // Label values escape backslash, quote and newline.
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Histogram;

    #[test]
    fn families_samples_and_histograms() {
        let h = Histogram::new(&[10], 2);
        h.observe(4);
        h.observe(40);
        let mut e = Exposition::default();
        e.family("x_total", Kind::Counter, "Things.")
            .sample("x_total", &[("stream", "a\"b")], 3);
        e.family("lat", Kind::Histogram, "Latency.").histogram(
            "lat",
            &[("stream", "s")],
            &h.snapshot(),
        );
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{stream=\"a\\\"b\"} 3\n\
             # HELP lat Latency.\n# TYPE lat histogram\n\
             lat_bucket{stream=\"s\",le=\"5\"} 1\nlat_bucket{stream=\"s\",le=\"+Inf\"} 2\n\
             lat_sum{stream=\"s\"} 22\nlat_count{stream=\"s\"} 2\n"
        );
    }
}
