//! The deployment config folder in the store: one record per job at
//! `/viking/deploy/<stack>/<job>`, JSON (or YAML, for records written by hand), in the job-file
//! form of `stack::Job`. A record added by hand is honoured like a deployed one.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::{
    stack::{parse::parse_job, yaml, Deployed, Job, Port, StackError},
    store::{Store, StoreError},
};

pub const PREFIX: &str = crate::store::keys::DEPLOY;

pub fn stack_prefix(stack: &str) -> String {
    format!("{PREFIX}{stack}/")
}

pub fn job_key(stack: &str, job: &str) -> String {
    format!("{PREFIX}{stack}/{job}")
}

/// One job record as found in the store.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub stack: String,
    pub job: Job,
    pub key: String,
}

/// Parses a job record; errors name the key (and line, for YAML written by hand).
pub fn parse_record(key: &str, value: &[u8]) -> Result<JobRecord, StackError> {
    let rest = key.strip_prefix(PREFIX).unwrap_or(key);
    let (stack, job) = rest
        .split_once('/')
        .filter(|(s, j)| !s.is_empty() && !j.is_empty() && !j.contains('/'))
        .ok_or_else(|| {
            StackError::new(key, 0, "", "not a job record (/viking/deploy/<stack>/<job>)")
        })?;
    crate::stack::check_name(stack).map_err(|e| StackError::new(key, 0, "stack", e))?;
    let text =
        std::str::from_utf8(value).map_err(|_| StackError::new(key, 0, "", "not UTF-8 text"))?;
    if let Some(at) = text.find('\0') {
        return Err(StackError::new(
            key,
            0,
            "",
            format!("not a text record (a NUL byte at offset {at})"),
        ));
    }
    if text.trim().is_empty() {
        return Err(StackError::new(
            key,
            0,
            "",
            "an empty record: a job is a mapping (command:, image:, ports:, ..)",
        ));
    }
    let file = Path::new(key);
    let node = yaml::parse(file, text)?;
    if node.as_map().is_none() {
        return Err(StackError::new(
            key,
            node.line,
            "",
            format!("a job record is a mapping, found {}", node.kind()),
        ));
    }
    let parsed = parse_job(file, job, &node, "", false)?;
    Ok(JobRecord { stack: stack.to_owned(), job: parsed.job, key: key.to_owned() })
}

/// The canonical record of a job (what a deploy writes).
pub fn record_value(job: &Job) -> Vec<u8> {
    serde_json::to_vec_pretty(job).unwrap_or_default()
}

/// Every job record in the store, parsed: what is deployed.
#[derive(Debug, Clone, Default)]
pub struct DeployedJobs {
    pub jobs: BTreeMap<(String, String), Job>,
    /// Records that do not parse, with why (listed, never silently used).
    pub invalid: Vec<StackError>,
    pub revision: i64,
}

impl DeployedJobs {
    pub async fn read<S: Store>(store: &S) -> Result<Self, StoreError> {
        let listing = store.list(PREFIX).await?;
        Ok(Self::from_kvs(&listing.kvs, listing.revision))
    }

    /// The records of a listing of the folder.
    pub fn from_kvs(kvs: &[crate::store::KeyValue], revision: i64) -> Self {
        let mut out = Self { revision, ..Self::default() };
        for kv in kvs {
            match parse_record(&kv.key, &kv.value) {
                Ok(r) => {
                    out.jobs.insert((r.stack, r.job.name.clone()), r.job);
                }
                Err(e) => out.invalid.push(e),
            }
        }
        out
    }

    pub fn stack<'a>(&'a self, stack: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        self.jobs.iter().filter(move |((s, _), _)| s == stack).map(|(_, j)| j)
    }

    pub fn stacks(&self) -> Vec<String> {
        let mut s: Vec<String> = self.jobs.keys().map(|(s, _)| s.clone()).collect();
        s.dedup();
        s
    }
}

impl Deployed for DeployedJobs {
    fn ports(&self, stack: &str, job: &str) -> Option<Vec<Port>> {
        self.jobs.get(&(stack.to_owned(), job.to_owned())).map(|j| j.ports.clone())
    }
    fn stack_exists(&self, stack: &str) -> bool {
        self.jobs.keys().any(|(s, _)| s == stack)
    }
}

/// Writes every job record under `dir` as `<dir>/<stack>/<job>.json` (`viking config export`).
pub fn export(jobs: &DeployedJobs, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for ((stack, name), job) in &jobs.jobs {
        let d = dir.join(stack);
        std::fs::create_dir_all(&d)?;
        let f = d.join(format!("{name}.json"));
        std::fs::write(&f, record_value(job))?;
        written.push(f);
    }
    Ok(written)
}

/// Reads `<dir>/<stack>/<job>.(json|yaml|yml)` files (`viking config apply`): every file must
/// parse, else nothing is applied. Refused too: two files for one job (`a.json` and
/// `a.yaml`), and symbolic links (only what is inside `dir` is read).
pub fn import(dir: &Path) -> Result<Vec<JobRecord>, StackError> {
    let mut out: Vec<JobRecord> = Vec::new();
    let mut from: BTreeMap<String, PathBuf> = BTreeMap::new();
    for sdir in entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let stack = sdir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let files = entries(&sdir)?.into_iter().filter(|p| {
            matches!(p.extension().and_then(|e| e.to_str()), Some("json" | "yaml" | "yml"))
        });
        for f in files {
            let job = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let key = job_key(&stack, &job);
            if let Some(first) = from.insert(key.clone(), f.clone()) {
                return Err(StackError::new(
                    &f,
                    0,
                    "",
                    format!(
                        "job {stack}/{job} is also in {}: keep one file per job",
                        first.display()
                    ),
                ));
            }
            let text = std::fs::read(&f).map_err(|e| StackError::new(&f, 0, "", e.to_string()))?;
            let mut r = parse_record(&key, &text).map_err(|mut e| {
                e.file = f.clone();
                e
            })?;
            r.key = key;
            out.push(r);
        }
    }
    Ok(out)
}

/// The entries of a folder, sorted; a symbolic link is an error naming it.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, StackError> {
    let read = std::fs::read_dir(dir).map_err(|e| StackError::new(dir, 0, "", e.to_string()))?;
    let mut out = Vec::new();
    for e in read {
        let e = e.map_err(|e| StackError::new(dir, 0, "", e.to_string()))?;
        let path = e.path();
        let kind = e.file_type().map_err(|e| StackError::new(&path, 0, "", e.to_string()))?;
        if kind.is_symlink() {
            return Err(StackError::new(
                &path,
                0,
                "",
                "a symbolic link: config apply reads only files inside the folder it is given",
            ));
        }
        out.push(path);
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_binary_and_non_mapping_records_are_refused() {
        for (bad, why) in [
            (&b""[..], "an empty record"),
            (b"  \n", "an empty record"),
            (b"\0\x01image: x", "NUL byte"),
            (b"command: x\0", "NUL byte"),
            (b"- a\n- b\n", "a job record is a mapping"),
            (b"just text", "a job record is a mapping"),
        ] {
            let err = parse_record("/viking/deploy/s/j", bad).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("/viking/deploy/s/j"), "{bad:?}: {err}");
        }
        assert!(parse_record("/viking/deploy/s/j", b"command: x\n").is_ok());
    }

    #[test]
    fn apply_refuses_two_files_for_one_job_and_links() {
        let dir = std::env::temp_dir().join(format!("vk-import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("web")).unwrap();
        std::fs::write(dir.join("web/app.json"), r#"{"name": "app", "command": ["x"], "scale": 1, "daemonize": false, "fixed": false, "static": false}"#).unwrap();
        assert_eq!(import(&dir).unwrap().len(), 1);
        std::fs::write(dir.join("web/app.yaml"), "command: y\n").unwrap();
        let err = import(&dir).unwrap_err().to_string();
        assert!(
            err.contains("web/app") && err.contains("app.json") && err.contains("app.yaml"),
            "{err}"
        );
        std::fs::remove_file(dir.join("web/app.yaml")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("web/other.yaml")).unwrap();
        let err = import(&dir).unwrap_err().to_string();
        assert!(err.contains("other.yaml") && err.contains("symbolic link"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
