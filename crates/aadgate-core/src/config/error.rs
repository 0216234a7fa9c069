//! Configuration errors: every one names the file, line and column (1-based).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One configuration problem at a position in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in, as given on the command line (or the tenants file).
    pub file: PathBuf,
    /// 1-based line; `1` for a missing required table.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong and, where possible, how to fix it; no position prefix.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// All problems found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte offsets of one source text into 1-based line and column numbers, and collects
/// errors for that file.
pub struct Reporter<'a> {
    file: &'a Path,
    source: &'a str,
    /// The errors recorded so far, in the order they were found (sorted by position later).
    pub errors: Vec<ConfigError>,
    /// Non-fatal findings (e.g. an expired exchange certificate); they do not fail the load.
    pub warnings: Vec<ConfigError>,
}

impl<'a> Reporter<'a> {
    /// A reporter for `source`, the text read from `file`.
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Reporter {
            file,
            source,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The file being reported on.
    pub fn file(&self) -> &Path {
        self.file
    }

    /// The text being reported on.
    pub fn source(&self) -> &str {
        self.source
    }

    /// The 1-based line and column of byte offset `at` (clamped to the text).
    pub fn position(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.source.len());
        let before = &self.source.as_bytes()[..at];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        (line, col)
    }

    /// Builds an error at the start of `span`.
    pub fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = self.position(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Records an error at the start of `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.at(span, message);
        self.errors.push(e);
    }

    /// Records a warning (logged, never fatal) at the start of `span`.
    pub fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.at(span, message);
        self.warnings.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_columns() {
        let src = "a = 1\nbb = 2\n\nccc = 3";
        let r = Reporter::new(Path::new("x.toml"), src);
        assert_eq!(r.position(0), (1, 1));
        assert_eq!(r.position(4), (1, 5));
        assert_eq!(r.position(6), (2, 1));
        assert_eq!(r.position(11), (2, 6));
        assert_eq!(r.position(14), (4, 1));
        assert_eq!(r.position(999), (4, 8));
    }
}
