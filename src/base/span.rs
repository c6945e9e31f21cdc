//! Reading TOML manifests so that errors name the file, the line and the key: the line of a
//! byte offset, parsing with the file named, and the check of names that become file names.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use toml::Spanned;

/// A parsed file's name and text: where its errors point.
pub struct Located {
    /// The path as given, for errors.
    pub file: String,
    text: String,
}

impl Located {
    /// `file:line` of a byte offset.
    pub fn at(&self, offset: usize) -> String {
        format!("{}:{}", self.file, line_of(&self.text, offset))
    }

    /// A key the file must have; an error naming the file and the key otherwise.
    pub fn required<'a, T>(&self, v: &'a Option<Spanned<T>>, key: &str) -> Result<&'a Spanned<T>> {
        v.as_ref()
            .ok_or_else(|| anyhow!("{}: key `{key}` is missing", self.file))
    }
}

/// Read and parse the TOML file at `path` (`what` says what it is, for errors); returns where
/// it is too, for the lines of later errors.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, what: &str) -> Result<(Located, T)> {
    let text = fs_err::read_to_string(path).with_context(|| format!("reading the {what}"))?;
    let raw = toml::from_str(&text).map_err(|e| toml_error(path, what, &text, &e))?;
    let file = path.display().to_string();
    Ok((Located { file, text }, raw))
}

/// A TOML parse error of the file at `path`; a value of the wrong type or range names its key
/// (the one on the line before the value), as every later check does.
pub fn toml_error(path: &Path, what: &str, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let key = e.span().and_then(|s| {
        let start = text.get(..s.start)?.rfind('\n').map_or(0, |i| i + 1);
        let (k, _) = text.get(start..s.start)?.split_once('=')?;
        let k = k.trim().trim_matches('"');
        (!k.is_empty()).then(|| format!(" key `{k}`:"))
    });
    anyhow!(
        "{}: invalid {what}:{} {}",
        path.display(),
        key.unwrap_or_default(),
        e.to_string().trim_end()
    )
}

/// A name that becomes a file or directory name: letters, digits, `-`, `_` and `.`, not
/// starting with `.`, at most `max` bytes; an error naming `at` (file:line) and the key.
pub fn check_name(
    v: &Spanned<String>,
    key: &str,
    max: usize,
    at: &dyn Fn(usize) -> String,
) -> Result<()> {
    let n = v.get_ref();
    let ok = !n.is_empty()
        && n.len() <= max
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        bail!(
            "{}: key `{key}`: {n:?} must be 1 to {max} letters, digits, `-`, `_` and `.`, not \
             starting with `.`",
            at(v.span().start)
        );
    }
    Ok(())
}

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
