//! The API's bearer token: made once per cluster at the first agent's start, kept in the
//! store, and copied by every agent to a root-only file for the CLI on that host.
use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::store::{Compare, Op, Store, StoreError, Txn};

pub const TOKEN_KEY: &str = "/viking/api/token";
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/viking/api-token";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} is empty: the API token is missing")]
    Empty { path: PathBuf },
}

fn random_hex() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(
        |source| TokenError::Io { what: "reading", path: "/dev/urandom".into(), source },
    )?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The cluster's token (created if there is none yet), also written to `local` (mode 0600).
pub async fn ensure<S: Store>(store: &S, local: &Path) -> Result<String, TokenError> {
    let token = match store.get(TOKEN_KEY).await? {
        Some(kv) => String::from_utf8_lossy(&kv.value).trim().to_owned(),
        None => {
            let fresh = random_hex()?;
            let txn = Txn::when([Compare::Absent(TOKEN_KEY.into())])
                .then([Op::put(TOKEN_KEY, fresh.clone())]);
            if store.txn(txn).await?.succeeded {
                fresh
            } else {
                // Another agent made one first: use it.
                let kv = store.get(TOKEN_KEY).await?;
                kv.map(|kv| String::from_utf8_lossy(&kv.value).trim().to_owned()).unwrap_or(fresh)
            }
        }
    };
    write_local(local, &token)?;
    Ok(token)
}

fn write_local(path: &Path, token: &str) -> Result<(), TokenError> {
    let io =
        |what: &'static str| move |source| TokenError::Io { what, path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the folder of"))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("writing"))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io("restricting"))?;
    f.write_all(token.as_bytes()).map_err(io("writing"))
}

/// The token for the CLI: `VIKING_TOKEN`, else the file.
pub fn read_local(path: &Path) -> Result<String, TokenError> {
    if let Ok(t) = std::env::var("VIKING_TOKEN") {
        return Ok(t);
    }
    let t = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
        what: "reading the API token from",
        path: path.to_owned(),
        source,
    })?;
    let t = t.trim().to_owned();
    if t.is_empty() {
        return Err(TokenError::Empty { path: path.to_owned() });
    }
    Ok(t)
}
