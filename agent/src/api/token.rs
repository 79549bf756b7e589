//! The API's bearer token: made once per cluster at the first agent's start, kept in the
//! store, and copied by every agent to a root-only file for the CLI on that host.
//!
//! A token is never empty: one in the store that is empty or that a header cannot carry is
//! replaced by a fresh one at the next agent start. The file is written as a fresh file
//! (created exclusively, never through a link) that replaces the old path atomically, so a
//! symlink or a file someone else owns at that path is replaced, never written through.
use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
};

use crate::store::{Compare, Op, Store, StoreError, Txn};

pub const TOKEN_KEY: &str = "/viking/api/token";
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/viking/api-token";
/// Longest token accepted (a header line has to carry it).
pub const MAX_TOKEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} is empty: the API token is missing")]
    Empty { path: PathBuf },
    #[error("the API token in {from} is not usable: {reason}")]
    Invalid { from: String, reason: &'static str },
    #[error("{path} is a symbolic link: the API token file is never read through a link")]
    Link { path: PathBuf },
    #[error("refusing to keep the API token in {dir}: {reason}")]
    UnsafeDir { dir: PathBuf, reason: String },
    #[error("the API token in the store ({TOKEN_KEY}) kept changing; try again")]
    Contended,
}

/// Why `token` cannot be a bearer token, if it cannot: empty, too long, or holding a byte
/// an HTTP header cannot carry (whitespace, a control character, non-ASCII).
pub fn check(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("it is empty");
    }
    if token.len() > MAX_TOKEN {
        return Err("it is longer than 4096 bytes");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it holds whitespace (a newline?), a control character or a non-ASCII byte");
    }
    Ok(())
}

fn random_hex() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(
        |source| TokenError::Io { what: "reading", path: "/dev/urandom".into(), source },
    )?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The cluster's token (created if there is none yet, replaced if the one stored is not
/// usable), also written to `local` (mode 0600, owned by this process's user).
pub async fn ensure<S: Store>(store: &S, local: &Path) -> Result<String, TokenError> {
    let token = agree(store).await?;
    write_local(local, &token)?;
    Ok(token)
}

/// Reads the stored token or puts a fresh one, by compare-and-swap, so that agents starting
/// together agree on one.
async fn agree<S: Store>(store: &S) -> Result<String, TokenError> {
    for _ in 0..10 {
        let fresh = random_hex()?;
        let txn = match store.get(TOKEN_KEY).await? {
            Some(kv) => {
                let stored = String::from_utf8_lossy(&kv.value).trim().to_owned();
                let Err(reason) = check(&stored) else { return Ok(stored) };
                tracing::warn!(
                    key = TOKEN_KEY,
                    reason,
                    "the API token in the store is not usable; replacing it with a fresh one"
                );
                Txn::when([Compare::ModRevision(TOKEN_KEY.into(), kv.mod_revision)])
            }
            None => Txn::when([Compare::Absent(TOKEN_KEY.into())]),
        };
        if store.txn(txn.then([Op::put(TOKEN_KEY, fresh.clone())])).await?.succeeded {
            return Ok(fresh);
        }
        // Another agent wrote first: read what it wrote.
    }
    Err(TokenError::Contended)
}

/// The folder must not let another user swap the file: owned by this user or root, and not
/// writable by others unless sticky (as /tmp is).
fn check_dir(dir: &Path) -> Result<(), TokenError> {
    let unsafe_dir = |reason: String| TokenError::UnsafeDir { dir: dir.to_owned(), reason };
    let meta = std::fs::metadata(dir).map_err(|source| TokenError::Io {
        what: "reading",
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a folder".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this user or root",
            meta.uid()
        )));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(format!(
            "others may write to it (mode {:o}) and it is not sticky",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Writes `token` to a fresh file beside `path` (created exclusively, not following links,
/// mode 0600) and renames it over `path`: whatever was there (a link, a file of another
/// owner) is replaced, never written through.
fn write_local(path: &Path, token: &str) -> Result<(), TokenError> {
    let io = |what: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| TokenError::Io { what, path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| TokenError::UnsafeDir {
            dir: path.to_owned(),
            reason: "the token file needs a file name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating the folder of", path))?;
    check_dir(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos:x}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing", path)(e));
    }
    // NB: the rename is durable once the folder is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The token for the CLI: `VIKING_TOKEN`, else the file (never read through a link).
pub fn read_local(path: &Path) -> Result<String, TokenError> {
    if let Ok(t) = std::env::var("VIKING_TOKEN") {
        let t = t.trim().to_owned();
        check(&t).map_err(|reason| TokenError::Invalid { from: "VIKING_TOKEN".into(), reason })?;
        return Ok(t);
    }
    let io = |source| TokenError::Io {
        what: "reading the API token from",
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                TokenError::Link { path: path.to_owned() }
            } else {
                io(e)
            }
        })?;
    let mut raw = Vec::new();
    std::io::Read::take(&mut f, MAX_TOKEN as u64 + 2).read_to_end(&mut raw).map_err(io)?;
    let t = String::from_utf8_lossy(&raw).trim().to_owned();
    if t.is_empty() {
        return Err(TokenError::Empty { path: path.to_owned() });
    }
    check(&t).map_err(|reason| TokenError::Invalid { from: path.display().to_string(), reason })?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_visible_ascii_and_never_empty() {
        assert!(check("0123abcd").is_ok());
        assert!(check("").is_err());
        assert!(check("abc\ndef").is_err());
        assert!(check("abc def").is_err());
        assert!(check("abcé").is_err());
        assert!(check(&"a".repeat(MAX_TOKEN + 1)).is_err());
    }
}
