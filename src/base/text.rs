//! Text helpers for messages: the tail of a log, the short form of a hash.

/// The last `n` non-blank lines of `s`, joined by `sep`.
pub fn tail(s: &str, n: usize, sep: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(sep)
}

/// How many characters of a hash a message shows.
pub const SHORT_HASH: usize = 12;

/// The first [`SHORT_HASH`] characters of `s` (a commit checksum, a digest), for messages: the
/// whole of a shorter string, never cut inside a character.
pub fn short_hash(s: &str) -> &str {
    s.char_indices().nth(SHORT_HASH).map_or(s, |(i, _)| &s[..i])
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
    fn short_hashes() {
        let c = "0123456789abcdef".repeat(4);
        assert_eq!(short_hash(&c), "0123456789ab");
        assert_eq!(short_hash("0123456789ab"), "0123456789ab");
        assert_eq!(short_hash("c2"), "c2", "a shorter string is whole");
        assert_eq!(short_hash(""), "");
        assert_eq!(
            short_hash("ééééééééééééé"),
            "éééééééééééé",
            "twelve characters, not bytes"
        );
    }
}
