//! Progress of long CLI work on stderr: lines redrawn in place when stderr is a terminal,
//! otherwise each line printed once when it changes (logs and CI stay readable).
use std::io::{IsTerminal as _, Write as _};

pub struct Live {
    tty: bool,
    shown: Vec<String>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        Self { tty: std::io::stderr().is_terminal(), shown: Vec::new() }
    }

    /// Shows `lines` (one per item followed: their order and number may change).
    pub fn show(&mut self, lines: &[String]) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            // Up over what was drawn, then each line cleared and drawn again.
            if !self.shown.is_empty() {
                let _ = write!(err, "\x1b[{}A", self.shown.len());
            }
            for l in lines {
                let _ = writeln!(err, "\r\x1b[2K{l}");
            }
            for _ in lines.len()..self.shown.len() {
                let _ = writeln!(err, "\r\x1b[2K");
            }
        } else {
            for l in lines.iter().filter(|l| !self.shown.contains(l)) {
                let _ = writeln!(err, "{l}");
            }
        }
        let _ = err.flush();
        if !self.tty || lines.len() >= self.shown.len() {
            self.shown = lines.to_vec();
        } else {
            // NB: the cleared lines below stay part of what the next redraw goes up over.
            let mut shown = lines.to_vec();
            shown.resize(self.shown.len(), String::new());
            self.shown = shown;
        }
    }
}
