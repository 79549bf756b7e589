//! Work inside a network namespace. A namespace belongs to a thread, so the work runs on a
//! thread of its own (never a pooled one, which would stay in the namespace), and the caller
//! awaits it without blocking its runtime.
use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {}: {source}", path.display())]
    Enter { path: PathBuf, source: std::io::Error },
    #[error("the thread working in a network namespace died")]
    Died,
}

/// Runs `f` on a new thread inside the network namespace at `ns` (in the caller's own when
/// `None`) and waits for it.
pub async fn run_in<T, F>(ns: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = match ns {
        Some(p) => Some((std::fs::File::open(p).map_err(|e| enter(p, e))?, p.to_owned())),
        None => None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = || -> Result<T, NetnsError> {
            if let Some((file, path)) = &file {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| enter(path, e.into()))?;
            }
            Ok(f())
        };
        let _ = tx.send(run());
    });
    rx.await.map_err(|_| NetnsError::Died)?
}

fn enter(path: &Path, source: std::io::Error) -> NetnsError {
    NetnsError::Enter { path: path.to_owned(), source }
}
