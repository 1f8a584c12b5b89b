//! The typed values of configuration keys: sizes with units, durations in
//! humantime form, and the closed sets of words some keys take. Each is
//! read from the file (serde), from a flag or a variable (clap, through
//! `FromStr` or `ValueEnum`), and shown by `--help` as one would write it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a value is written after its flag (and in its variable), for
/// `--help`: the placeholder, and the default as one would type it.
pub trait FlagText {
    /// What `--help` shows after the flag (`<SIZE>`).
    const PLACEHOLDER: &'static str;
    /// Several values, comma-separated (or the flag given again).
    const LIST: bool = false;
    /// This value as one would write it after the flag.
    fn flag_text(&self) -> String;
}

/// Quoted when empty, so that `--help` shows that the default is nothing.
fn text_or_empty(s: String) -> String {
    if s.is_empty() {
        "\"\"".into()
    } else {
        s
    }
}

impl FlagText for String {
    const PLACEHOLDER: &'static str = "TEXT";
    fn flag_text(&self) -> String {
        text_or_empty(self.clone())
    }
}

impl FlagText for PathBuf {
    const PLACEHOLDER: &'static str = "PATH";
    fn flag_text(&self) -> String {
        text_or_empty(self.display().to_string())
    }
}

impl FlagText for SocketAddr {
    const PLACEHOLDER: &'static str = "ADDR";
    fn flag_text(&self) -> String {
        self.to_string()
    }
}

impl FlagText for bool {
    const PLACEHOLDER: &'static str = "BOOL";
    fn flag_text(&self) -> String {
        self.to_string()
    }
}

macro_rules! number_flag_text {
    ($($t:ty),*) => {$(
        impl FlagText for $t {
            const PLACEHOLDER: &'static str = "N";
            fn flag_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
number_flag_text!(u32, u64, usize);

impl<T: FlagText> FlagText for Vec<T> {
    const PLACEHOLDER: &'static str = "LIST";
    const LIST: bool = true;
    fn flag_text(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        let items: Vec<String> = self.iter().map(T::flag_text).collect();
        items.join(",")
    }
}

/// A number of bytes. In the file an integer or a string with a unit
/// (`"64MiB"`, `"8 KiB"`); after a flag the same without quotes.
/// `--print-config` writes the integer, which any version reads back.
///
/// Units, in any case: B; KiB, MiB, GiB, TiB (powers of 1024); KB, MB, GB,
/// TB (powers of 1000). No fractions: `1536MiB`, not `1.5GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    pub const fn kib(n: u64) -> Size {
        Size(n << 10)
    }
    pub const fn mib(n: u64) -> Size {
        Size(n << 20)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

const SIZE_UNITS: &str = "B; KiB, MiB, GiB, TiB (powers of 1024); KB, MB, GB, TB (powers of 1000)";

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let not_a_size = || {
            format!(
                "`{s}` is not a size: a whole number of bytes, or one with a unit ({SIZE_UNITS})"
            )
        };
        if end == 0 {
            return Err(not_a_size());
        }
        let n: u64 = s[..end].parse().map_err(|_| format!("`{s}`: too large"))?;
        let unit: u64 = match s[end..].trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(not_a_size()),
        };
        n.checked_mul(unit)
            .map(Size)
            .ok_or_else(|| format!("`{s}`: too large"))
    }
}

/// The largest binary unit that holds it whole (`8MiB`), else bytes.
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a number of bytes, or a string with a unit ({SIZE_UNITS})"
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{v}: a size cannot be negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl FlagText for Size {
    const PLACEHOLDER: &'static str = "SIZE";
    fn flag_text(&self) -> String {
        self.to_string()
    }
}

/// A duration in humantime form: `"10s"`, `"500ms"`, `"7d"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(n: u64) -> Span {
        Span(Duration::from_secs(n))
    }
    pub const fn millis(n: u64) -> Span {
        Span(Duration::from_millis(n))
    }
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Span, String> {
        humantime::parse_duration(s.trim())
            .map(Span)
            .map_err(|e| format!("`{s}` is not a duration such as 10s, 500ms, 12h or 7d: {e}"))
    }
}

/// In the largest unit that holds it whole, but without climbing once
/// fewer than a hundred of a unit remain: `60s` stays `60s` and `24h` stays
/// `24h`, as one writes them, while `168h` is `7d`.
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut n = self.0.as_nanos();
        if n == 0 {
            return f.write_str("0s");
        }
        let mut unit = "ns";
        for (factor, larger) in [
            (1000, "us"),
            (1000, "ms"),
            (1000, "s"),
            (60, "m"),
            (60, "h"),
            (24, "d"),
        ] {
            if n < 100 || !n.is_multiple_of(factor) {
                break;
            }
            n /= factor;
            unit = larger;
        }
        write!(f, "{n}{unit}")
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads a duration's text with `FromStr`; saying, when given something
/// else (a bare number), what is expected.
struct DurationText<T>(std::marker::PhantomData<T>);

impl<T: FromStr<Err = String>> serde::de::Visitor<'_> for DurationText<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration in a string, such as \"10s\", \"500ms\" or \"7d\"")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        d.deserialize_str(DurationText(std::marker::PhantomData))
    }
}

impl FlagText for Span {
    const PLACEHOLDER: &'static str = "DURATION";
    fn flag_text(&self) -> String {
        self.to_string()
    }
}

/// A duration that may be left out: `""` (the empty string) means none,
/// which the key's documentation says the meaning of ("keep all", "keep
/// the default"). Otherwise as [`Span`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OptionalSpan(pub Option<Duration>);

impl OptionalSpan {
    pub const NONE: OptionalSpan = OptionalSpan(None);
    pub const fn get(self) -> Option<Duration> {
        self.0
    }
}

impl FromStr for OptionalSpan {
    type Err = String;
    fn from_str(s: &str) -> Result<OptionalSpan, String> {
        if s.trim().is_empty() {
            return Ok(OptionalSpan(None));
        }
        s.parse::<Span>().map(|d| OptionalSpan(Some(d.0)))
    }
}

impl fmt::Display for OptionalSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => Span(d).fmt(f),
            None => Ok(()),
        }
    }
}

impl Serialize for OptionalSpan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OptionalSpan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OptionalSpan, D::Error> {
        d.deserialize_str(DurationText(std::marker::PhantomData))
    }
}

impl FlagText for OptionalSpan {
    const PLACEHOLDER: &'static str = "DURATION";
    fn flag_text(&self) -> String {
        text_or_empty(self.to_string())
    }
}

/// Words a key takes, spelled the same in the file, after a flag and in
/// a variable (lower case); `--help` lists them.
macro_rules! word_set {
    ($(#[$meta:meta])* $name:ident, $placeholder:literal { $($(#[$vmeta:meta])* $variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
        #[serde(rename_all = "lowercase")]
        #[value(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),*
        }

        /// The word, as written.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match clap::ValueEnum::to_possible_value(self) {
                    Some(v) => f.write_str(v.get_name()),
                    None => Ok(()),
                }
            }
        }

        impl FlagText for $name {
            const PLACEHOLDER: &'static str = $placeholder;
            fn flag_text(&self) -> String {
                self.to_string()
            }
        }
    };
}

word_set! {
    /// When appends become durable (`spool.fsync`).
    FsyncMode, "WHEN" {
        /// fdatasync before every ack: the durability promise.
        Always,
        /// fdatasync on a timer (`spool.fsync_interval`): a crash loses
        /// acked messages. Benchmarks only.
        Interval,
        /// Never fdatasync. Benchmarks only.
        Never,
    }
}

word_set! {
    /// How the XDP program is attached (`xdp.mode`).
    XdpMode, "MODE" {
        /// Native, else generic.
        Auto,
        /// In the driver.
        Native,
        /// On SKBs: any interface, slower.
        Generic,
    }
}

word_set! {
    /// How AF_XDP sockets bind (`xdp.bind`).
    XdpBind, "MODE" {
        /// Zero-copy, else copy.
        Auto,
        Zerocopy,
        Copy,
    }
}

word_set! {
    /// How log lines are written (`log.format`).
    LogFormat, "FORMAT" {
        Text,
        Json,
    }
}

/// What a consumer group that falls behind is given (a group's `conflate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflate {
    /// Every message.
    #[default]
    None,
    /// The newest message of each key (`conflate_key`).
    LatestPerKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_show_the_largest_whole_one() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("64MiB", 64 << 20),
            ("8 KiB", 8 << 10),
            (" 1gib ", 1 << 30),
            ("2TiB", 2 << 40),
            ("1KB", 1_000),
            ("3 MB", 3_000_000),
            ("1GB", 1_000_000_000),
            ("5B", 5),
        ] {
            assert_eq!(text.parse::<Size>(), Ok(Size(bytes)), "{text}");
        }
        for bad in ["", "MiB", "1.5GiB", "-1", "12 apples", "99999999999TiB"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
        assert_eq!(Size::mib(8).to_string(), "8MiB");
        assert_eq!(Size(1500).to_string(), "1500");
        assert_eq!(Size(0).to_string(), "0");
    }

    #[test]
    fn durations_show_as_one_writes_them_and_read_back() {
        for (d, shown) in [
            (Span::secs(10), "10s"),
            (Span::secs(60), "60s"),
            (Span::secs(24 * 3600), "24h"),
            (Span::secs(12 * 3600), "12h"),
            (Span::secs(7 * 86400), "7d"),
            (Span::millis(10), "10ms"),
            (Span::millis(1500), "1500ms"),
            (Span::secs(120), "2m"),
            (Span(Duration::from_micros(250)), "250us"),
            (Span(Duration::ZERO), "0s"),
        ] {
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Span>(), Ok(d), "{shown}");
        }
        assert_eq!("1h 30m".parse::<Span>(), Ok(Span::secs(5400)));
        assert!("soon".parse::<Span>().is_err());
        assert!("".parse::<Span>().is_err());
        assert_eq!("".parse::<OptionalSpan>(), Ok(OptionalSpan::NONE));
        assert_eq!(
            "7d".parse::<OptionalSpan>(),
            Ok(OptionalSpan(Some(Duration::from_secs(7 * 86400))))
        );
        assert_eq!(OptionalSpan::NONE.to_string(), "");
        assert_eq!(OptionalSpan::NONE.flag_text(), "\"\"");
    }
}
