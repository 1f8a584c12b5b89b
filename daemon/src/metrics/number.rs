//! Numbers as the exposition format writes them: integers as they are,
//! floats in their shortest decimal form that reads back as the same double
//! (`0.00005`, never `5e-5` nor `0.000049999999999999996`), infinities as
//! `+Inf` and `-Inf`, and `NaN`.

use std::fmt::Write;

/// A sample's value.
pub trait SampleValue {
    /// Appends the value's text to `out`.
    fn write_to(&self, out: &mut String);
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl SampleValue for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

integer!(u8, u16, u32, u64, usize, i32, i64);

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        write_float(out, *self);
    }
}

impl SampleValue for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

/// Appends `v`: Rust's `Display` of a double is already the shortest
/// decimal that parses back to it, in positional notation; only the
/// non-finite values are spelt as Prometheus spells them.
pub fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `v` as text (see [`write_float`]).
pub fn float(v: f64) -> String {
    let mut s = String::new();
    write_float(&mut s, v);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{Histogram, BATCH_SIZES, LATENCY_US};

    #[test]
    fn floats_are_short_exact_decimals() {
        assert_eq!(float(0.00005), "0.00005");
        assert_eq!(float(50.0 / 1e6), "0.00005");
        assert_eq!(float(0.00075), "0.00075");
        assert_eq!(float(5.0), "5");
        assert_eq!(float(0.0), "0");
        assert_eq!(float(-2.5), "-2.5");
        assert_eq!(float(1e-7), "0.0000001");
        assert_eq!(float(123456789.125), "123456789.125");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        // Every text reads back as the very same double.
        for v in [0.1, 1.0 / 3.0, 2e-9, 7.25e12, f64::MIN_POSITIVE] {
            assert_eq!(float(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn latency_bounds_print_as_the_decimal_seconds_they_are() {
        let s = Histogram::latency().snapshot();
        let les: Vec<String> = s.buckets.iter().map(|(b, _)| float(*b)).collect();
        assert_eq!(
            les,
            [
                "0.00005", "0.0001", "0.0002", "0.0003", "0.0005", "0.00075", "0.001", "0.002",
                "0.003", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "5", "+Inf"
            ]
        );
        assert_eq!(les.len(), LATENCY_US.len() + 1);
    }

    #[test]
    fn batch_bounds_print_as_whole_numbers() {
        let s = Histogram::batch_sizes().snapshot();
        let les: Vec<String> = s.buckets.iter().map(|(b, _)| float(*b)).collect();
        let want: Vec<String> = BATCH_SIZES
            .iter()
            .map(u64::to_string)
            .chain(["+Inf".to_owned()])
            .collect();
        assert_eq!(les, want);
    }

    #[test]
    fn integers_and_flags() {
        let mut out = String::new();
        u64::MAX.write_to(&mut out);
        out.push(' ');
        (-3i64).write_to(&mut out);
        out.push(' ');
        true.write_to(&mut out);
        assert_eq!(out, "18446744073709551615 -3 1");
    }
}
