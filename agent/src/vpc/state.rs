//! The policy in force, as the agent last applied it: kept in `<run dir>/vpc/running.json`
//! (tmpfs, gone at reboot like the pins), so a restarted agent knows what the kernel runs,
//! which rule has which counters, and where each interface is attached.
use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use viking_common::vpc::{FIRST_RULE, MAX_RULES};

use super::{attach::AttachMode, compile::RuleInfo, error::VpcError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileText {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub ifindex: u32,
    pub via: AttachMode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub files: Vec<FileText>,
    /// Unix seconds.
    pub applied_at: u64,
    /// Applied over the lockout guard's refusal.
    pub forced: bool,
    /// Rule identity -> kernel rule id (its counters).
    pub ids: BTreeMap<String, u32>,
    /// Interface -> policy slot.
    pub slots: BTreeMap<String, u8>,
    pub attached: BTreeMap<String, Attached>,
}

/// A short, stable fingerprint of a set of files (names and contents).
pub fn fingerprint(files: &[(PathBuf, String)]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (p, t) in files {
        p.hash(&mut h);
        t.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

impl Running {
    pub fn fingerprint(&self) -> String {
        let files: Vec<(PathBuf, String)> =
            self.files.iter().map(|f| (f.path.clone(), f.text.clone())).collect();
        fingerprint(&files)
    }

    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable VPC state file");
                None
            }
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), VpcError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(VpcError::io("creating", dir))?;
        }
        let tmp = path.with_extension("json.new");
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| VpcError::io("encoding", path)(std::io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(VpcError::io("writing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(VpcError::io("renaming", path))
    }
}

/// What `assign_ids` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The kernel id of each rule, in order.
    pub ids: Vec<u32>,
    /// Rule identity -> id, to record.
    pub map: BTreeMap<String, u32>,
    /// Ids given to rules that had none (their counters start at zero).
    pub fresh: Vec<u32>,
}

/// Kernel rule ids for `rules`: a rule keeps the id it had (and its counters); a new one gets
/// the lowest id that no rule of the running policy holds, so the counters of a removed rule
/// are not handed on at once.
pub fn assign_ids(rules: &[RuleInfo], prev: &BTreeMap<String, u32>) -> Result<Assigned, VpcError> {
    let mut identities = Vec::with_capacity(rules.len());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in rules {
        let base = r.identity();
        let n = seen.entry(base.clone()).or_default();
        *n += 1;
        identities.push(if *n == 1 { base } else { format!("{base}#{n}") });
    }
    let kept: BTreeSet<u32> = identities.iter().filter_map(|i| prev.get(i).copied()).collect();
    let held: BTreeSet<u32> = prev.values().copied().collect();
    let mut taken = kept.clone();
    let mut ids = Vec::with_capacity(rules.len());
    let mut map = BTreeMap::new();
    let mut fresh = Vec::new();
    for ident in identities {
        let id = match prev.get(&ident) {
            Some(&id) => id,
            None => {
                let free = |id: &u32| !taken.contains(id);
                let id = (FIRST_RULE..MAX_RULES)
                    .find(|id| free(id) && !held.contains(id))
                    .or_else(|| (FIRST_RULE..MAX_RULES).find(free))
                    .ok_or_else(|| {
                        VpcError::Full(format!(
                            "the policy has more than the filter's {} rules",
                            MAX_RULES - FIRST_RULE
                        ))
                    })?;
                fresh.push(id);
                id
            }
        };
        taken.insert(id);
        ids.push(id);
        map.insert(ident, id);
    }
    Ok(Assigned { ids, map, fresh })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpc::policy::Action;

    fn rule(desc: &str) -> RuleInfo {
        RuleInfo {
            file: "a.yml".into(),
            line: 1,
            name: None,
            action: Action::Allow,
            description: desc.into(),
            interfaces: vec!["eth0".into()],
        }
    }

    #[test]
    fn rules_keep_their_ids_and_new_ones_do_not_reuse_removed_ids_at_once() {
        let Assigned { ids, map, fresh } =
            assign_ids(&[rule("a"), rule("b"), rule("a")], &BTreeMap::new()).unwrap();
        assert_eq!(ids, vec![FIRST_RULE, FIRST_RULE + 1, FIRST_RULE + 2]);
        assert_eq!(fresh, ids);
        // "b" removed, "c" added, the duplicate "a" stays: "c" does not get b's id.
        let next = assign_ids(&[rule("c"), rule("a"), rule("a")], &map).unwrap();
        assert_eq!(next.ids, vec![FIRST_RULE + 3, FIRST_RULE, FIRST_RULE + 2]);
        assert_eq!(next.fresh, vec![FIRST_RULE + 3]);
    }
}
