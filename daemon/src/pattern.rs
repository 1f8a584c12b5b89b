//! Stream-name patterns (a forward's `streams`, its consumer group's
//! settings): `*` stands for any run of characters.

/// Whether a stream name is a pattern.
pub fn is_pattern(s: &str) -> bool {
    s.contains('*')
}

/// Whether `name` matches `pattern`, in which `*` stands for any run of
/// characters (none too) and every other character for itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn a_star_stands_for_any_run_of_characters() {
        assert!(matches("*", "orders"));
        assert!(matches("orders-*", "orders-eu"));
        assert!(matches("orders-*", "orders-"));
        assert!(!matches("orders-*", "orders"));
        assert!(matches("*-eu", "orders-eu"));
        assert!(!matches("*-eu", "orders-us"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(!matches("ab*ba", "aba"));
        assert!(matches("orders", "orders"));
        assert!(!matches("orders", "orders2"));
    }
}
