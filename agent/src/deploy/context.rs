//! fig `build:` contexts. `viking deploy` packs each job's context folder into a tar
//! (deterministic: sorted, no times or owners), which travels in the deploy request and is
//! stored with the deploy, in the same commit, named by its SHA-256:
//!
//! - `/viking/contexts/<sha256>`: `{"size": N, "chunks": K}`
//! - `/viking/contexts-data/<sha256>/<n>`: the tar in chunks of 512 KiB (etcd takes 1.5 MiB
//!   per request)
//!
//! The job record keeps the hash (`build_hash`), so a changed context is a changed job: its
//! instances are replaced, and the docker runtime builds the new image (tagged by the hash)
//! on the host that runs it. A context no record names any more goes with the deploy that
//! dropped it.
use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    stack::StackError,
    store::{KeyValue, Op, Store, StoreError},
};

pub const PREFIX: &str = "/viking/contexts/";
const DATA: &str = "/viking/contexts-data/";
/// The largest context a deploy carries (the API takes 8 MiB per request, base64 included).
pub const MAX_CONTEXT: usize = 4 << 20;
const CHUNK: usize = 512 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    size: usize,
    chunks: usize,
}

/// The SHA-256 of a packed context, hex.
pub fn hash(tar: &[u8]) -> String {
    Sha256::digest(tar).iter().map(|b| format!("{b:02x}")).collect()
}

/// The image tag a build is known by on every host: `viking-build/<stack>-<job>:<hash12>`.
pub fn image_tag(stack: &str, job: &str, hash: &str) -> String {
    format!("viking-build/{stack}-{job}:{}", hash.get(..12).unwrap_or(hash))
}

/// Packs the folder `dir` (the job `job`'s `build:` context) into a tar: entries sorted, times,
/// owners and names of owners zeroed, so the same folder always makes the same tar.
pub fn pack(dir: &Path, job: &str) -> Result<Vec<u8>, StackError> {
    let field = format!("{job}.build");
    let err = |path: &Path, e: &dyn std::fmt::Display| {
        StackError::new(path, 0, field.clone(), e.to_string())
    };
    if !dir.is_dir() {
        return Err(err(dir, &"the build context is not a folder"));
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files).map_err(|e| err(dir, &e))?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut total = 0usize;
    for rel in files {
        let path = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| err(&path, &e))?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| err(&path, &e))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            builder.append_link(&mut header, &rel, &target).map_err(|e| err(&path, &e))?;
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(mode & 0o7777);
            builder.append_data(&mut header, &rel, std::io::empty()).map_err(|e| err(&path, &e))?;
        } else {
            let mut data = Vec::new();
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| err(&path, &e))?;
            total += data.len();
            if total > MAX_CONTEXT {
                return Err(err(
                    dir,
                    &format!("the build context is over {} MiB", MAX_CONTEXT >> 20),
                ));
            }
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            header.set_mode(mode & 0o7777);
            builder.append_data(&mut header, &rel, data.as_slice()).map_err(|e| err(&path, &e))?;
        }
    }
    builder.into_inner().map_err(|e| err(dir, &e))
}

/// Every path under `dir`, relative to `root`, sorted, folders before what they hold.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).map(Path::to_path_buf).unwrap_or_else(|_| path.clone());
        out.push(rel);
        if e.file_type()?.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// The hashes of the contexts stored.
pub fn stored(kvs: &[KeyValue]) -> BTreeSet<String> {
    kvs.iter().filter_map(|kv| kv.key.strip_prefix(PREFIX)).map(str::to_owned).collect()
}

/// The writes that store a context.
pub fn put_ops(hash: &str, tar: &[u8]) -> Vec<Op> {
    let chunks: Vec<&[u8]> = tar.chunks(CHUNK).collect();
    let marker = Marker { size: tar.len(), chunks: chunks.len() };
    let mut ops =
        vec![Op::put(format!("{PREFIX}{hash}"), serde_json::to_vec(&marker).unwrap_or_default())];
    for (n, c) in chunks.into_iter().enumerate() {
        ops.push(Op::put(format!("{DATA}{hash}/{n:06}"), c.to_vec()));
    }
    ops
}

/// The writes that drop a context.
pub fn delete_ops(hash: &str) -> Vec<Op> {
    vec![
        Op::delete(format!("{PREFIX}{hash}")),
        Op::DeletePrefix { prefix: format!("{DATA}{hash}/") },
    ]
}

/// A stored context, whole and checked against its hash.
pub async fn fetch<S: Store>(store: &S, hash: &str) -> Result<Vec<u8>, StoreError> {
    let bad = |reason: &'static str| StoreError::BadKey {
        store: store.describe(),
        key: format!("{PREFIX}{hash}"),
        reason,
    };
    let marker =
        store.get(&format!("{PREFIX}{hash}")).await?.ok_or_else(|| bad("no such build context"))?;
    let marker: Marker =
        serde_json::from_slice(&marker.value).map_err(|_| bad("not a context record"))?;
    let data = store.list(&format!("{DATA}{hash}/")).await?;
    if data.kvs.len() != marker.chunks {
        return Err(bad("the context's chunks are not all there"));
    }
    let tar: Vec<u8> = data.kvs.into_iter().flat_map(|kv| kv.value).collect();
    if tar.len() != marker.size || self::hash(&tar) != hash {
        return Err(bad("the context does not match its hash"));
    }
    Ok(tar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_folder_packs_the_same_and_a_change_shows() {
        let dir = std::env::temp_dir().join(format!("vk-ctx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(dir.join("sub/app.sh"), "echo hi\n").unwrap();
        let a = pack(&dir, "web").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.join("sub/app.sh"), "echo hi\n").unwrap();
        assert_eq!(hash(&pack(&dir, "web").unwrap()), hash(&a), "a touch is no change");
        std::fs::write(dir.join("sub/app.sh"), "echo bye\n").unwrap();
        let b = pack(&dir, "web").unwrap();
        assert_ne!(hash(&b), hash(&a));
        let names: Vec<String> = tar::Archive::new(b.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile", "sub", "sub/app.sh"]);
        let ops = put_ops(&hash(&b), &b);
        assert_eq!(ops.len(), 2);
        let err = pack(&dir.join("nope"), "web").unwrap_err().to_string();
        assert!(err.contains("web.build") && err.contains("not a folder"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
