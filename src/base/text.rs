//! Text helpers for messages: the tail of a log.

/// The last `n` non-blank lines of `s`, joined by `sep`.
pub fn tail(s: &str, n: usize, sep: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(sep)
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
}
