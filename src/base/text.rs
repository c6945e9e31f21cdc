//! Text helpers for messages: the tail of a log.

/// The last `n` non-blank lines of `s`, joined by `sep`.
pub fn tail(s: &str, n: usize, sep: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(sep)
}

/// The first 12 characters of a commit checksum (or all of a shorter string), for messages.
pub fn short_hash(s: &str) -> &str {
    s.char_indices().nth(12).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail("a\n\nb\nc\n\n", 2, " / "), "b / c");
        assert_eq!(tail("a\n", 5, "\n"), "a");
        assert_eq!(tail("", 3, "\n"), "");
    }

    #[test]
    fn short_hashes_never_panic() {
        assert_eq!(short_hash(&"a".repeat(64)), "a".repeat(12));
        assert_eq!(short_hash("abc"), "abc");
        assert_eq!(short_hash(""), "");
        assert_eq!(short_hash("ééééééééééééé"), "éééééééééééé");
    }
}
