//! Where a value was written: the line of a byte offset, for errors that name file, line and key.

/// The 1-based line of a byte offset in `src` (for errors from TOML spans).
pub fn line_of(src: &str, offset: usize) -> usize {
    let mut end = offset.min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    src[..end].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let src = "a = 1\nb = \"é\"\nc = 3\n";
        assert_eq!(line_of(src, 0), 1);
        assert_eq!(line_of(src, src.find('c').unwrap()), 3);
        assert_eq!(line_of(src, src.find('é').unwrap() + 1), 2);
        assert_eq!(line_of(src, 1000), 4);
    }
}
