//! What a stream pattern and a principal's name may look like, and how a
//! pattern matches a stream. Shared by the config check and `sluice token`.

use std::fmt;

/// Longest stream name (it becomes a folder name), and so longest pattern.
const MAX_PATTERN: usize = 255;
/// Longest principal name. Names go into log lines and metric labels.
const MAX_PRINCIPAL_NAME: usize = 64;
/// Longest subject common name X.509 allows (RFC 5280, ub-common-name).
const MAX_COMMON_NAME: usize = 64;

/// The characters of a stream name.
fn is_stream_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A stream pattern: a stream name in which `*` stands for any run
/// (possibly empty) of stream-name characters; `*` alone matches every
/// stream. There are no other metacharacters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPattern(String);

impl StreamPattern {
    /// Checks `s`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<StreamPattern, String> {
        if s.is_empty() {
            return Err("a stream pattern cannot be empty".into());
        }
        if s.len() > MAX_PATTERN {
            return Err(format!(
                "a stream pattern has at most {MAX_PATTERN} characters, this one {}",
                s.len()
            ));
        }
        if let Some(c) = s.chars().find(|&c| c != '*' && !is_stream_char(c)) {
            return Err(format!(
                "`{s}` holds {c:?}: a stream pattern is made of A-Z a-z 0-9 . _ - and `*`"
            ));
        }
        // The spool refuses stream names starting with a dot (they would be
        // hidden folders), so such a pattern could only be a mistake.
        if s.starts_with('.') {
            return Err(format!(
                "`{s}` starts with `.`, as no stream name does: it would match nothing"
            ));
        }
        Ok(StreamPattern(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does `stream` match? A string that is not a valid stream name never
    /// matches, not even `*`: permission is only ever given to real streams.
    pub fn matches(&self, stream: &str) -> bool {
        crate::spool::writer::check_name(stream).is_ok() && glob(&self.0, stream)
    }
}

impl fmt::Display for StreamPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` matches any run of characters, everything else itself. The pieces
/// between stars must appear in order: the first at the start, the last at
/// the end, each middle one at its leftmost place after the one before
/// (leftmost leaves the most room for the rest, so it never misses a match).
fn glob(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = pieces.as_slice() else {
        return pattern == text; // no star
    };
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// A token principal's name: 1 to 64 of A-Z a-z 0-9 . _ - (safe in a log
/// line and a metric label as it is).
pub fn check_principal_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PRINCIPAL_NAME {
        return Err(format!(
            "a name has 1 to {MAX_PRINCIPAL_NAME} characters, `{name}` has {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|&c| !is_stream_char(c)) {
        return Err(format!(
            "`{name}` holds {c:?}: a name is made of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// A client certificate's subject common name, as configured: 1 to 64
/// characters (the X.509 limit) and no control characters. It is compared
/// exactly, case and all, with the name in the certificate.
pub fn check_common_name(cn: &str) -> Result<(), String> {
    let chars = cn.chars().count();
    if chars == 0 || chars > MAX_COMMON_NAME {
        return Err(format!(
            "a common name has 1 to {MAX_COMMON_NAME} characters, {cn:?} has {chars}"
        ));
    }
    if cn.chars().any(char::is_control) {
        return Err(format!("{cn:?} holds a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        // (pattern, stream, matches)
        let table = [
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("orders", "order", false),
            ("orders", "Orders", false),
            ("*", "orders", true),
            ("*", "a", true),
            ("logs-*", "logs-", true), // the star may match nothing
            ("logs-*", "logs-web", true),
            ("logs-*", "logs", false),
            ("logs-*", "xlogs-web", false),
            ("*-dlq", "orders-dlq", true),
            ("*-dlq", "orders-dlq2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*b*c", "abcbc", true),
            ("a*a", "a", false), // first and last may not overlap
            ("a*a", "aa", true),
            ("ab*ba", "aba", false),
            ("*.*", "a.b", true),
            ("*.*", "ab", false),
            ("**", "x", true),
            ("a**b", "ab", true),
            ("*x*", "x", true),
            ("*x*", "y", false),
            ("v1.*", "v1.orders", true),
            ("v1.*", "v1xorders", false), // `.` is literal, not "any character"
            // Not stream names: never matched, not even by `*`.
            ("*", "", false),
            ("*", ".hidden", false),
            ("*", "a/b", false),
            ("*", "../x", false),
            ("*", "a b", false),
            ("*", &"x".repeat(252), false),
            ("*", &"x".repeat(251), true),
            // A dead-letter stream's name is up to 255.
            ("*", &format!("{}.dlq", "x".repeat(251)), true),
        ];
        for (pattern, stream, want) in table {
            let p = StreamPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(stream), want, "{pattern:?} vs {stream:?}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pattern, says) in [
            ("", "empty"),
            ("logs/*", "'/'"),
            ("logs?", "'?'"),
            ("[ab]", "'['"),
            ("a b", "' '"),
            ("ordérs", "'é'"),
            (".x*", "starts with `.`"),
        ] {
            let e = StreamPattern::parse(pattern).unwrap_err();
            assert!(e.contains(says), "{pattern:?}: {e}");
        }
        let long = "x".repeat(256);
        assert!(StreamPattern::parse(&long).unwrap_err().contains("255"));
        assert!(StreamPattern::parse(&long[1..]).is_ok());
    }

    #[test]
    fn principal_and_common_names() {
        assert!(check_principal_name("ingest-a.v2_x").is_ok());
        assert!(check_principal_name(&"n".repeat(64)).is_ok());
        assert!(check_principal_name(&"n".repeat(65)).is_err());
        assert!(check_principal_name("").is_err());
        assert!(check_principal_name("a b").unwrap_err().contains("' '"));
        assert!(check_principal_name("a\"b").is_err());
        assert!(check_common_name("producer-7").is_ok());
        assert!(check_common_name("Producer 7, Inc.").is_ok());
        assert!(check_common_name("").is_err());
        assert!(check_common_name(&"é".repeat(64)).is_ok());
        assert!(check_common_name(&"é".repeat(65)).is_err());
        assert!(check_common_name("a\nb").unwrap_err().contains("control"));
    }
}
