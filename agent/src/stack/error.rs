use std::{fmt, path::PathBuf};

/// A problem in a stack or job file, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StackError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single line (a cycle, a missing file).
    pub line: usize,
    /// Where in the document: `web.ports[1]`, `services.db.links`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl StackError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self { file: file.into(), line, field: field.into(), message: message.into() }
    }
}
