//! Stacks: what the user writes (docs/stack-format.md).
//!
//! - `yaml`: YAML/JSON with line numbers; `parse`: the three formats into jobs
//! - `job`: the job model; `names`: names, links, env prefixes
//! - `env`: the link environment; `sequence`: start order
pub mod env;
mod error;
pub mod job;
pub mod names;
pub mod parse;
pub mod plan;
pub mod sequence;
pub mod yaml;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

pub use error::StackError;
pub use job::{Job, Port};
pub use names::{check_name, service_name, Link};
pub use parse::{Format, ParsedJob};

/// File names looked for when `viking deploy` is given a folder, in this order.
pub const STACK_FILES: &[&str] = &[
    "viking.yml",
    "viking.yaml",
    "stack.yml",
    "stack.yaml",
    "fig.yml",
    "fig.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// A parsed, self-consistent stack.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub file: PathBuf,
    pub format: Format,
    pub jobs: Vec<ParsedJob>,
}

/// The ports of a job already deployed in another stack, for links to it; `None` when the
/// stack or job is not deployed.
pub trait Deployed {
    fn ports(&self, stack: &str, job: &str) -> Option<Vec<Port>>;
    fn stack_exists(&self, stack: &str) -> bool;
}

/// Nothing deployed (a stack checked on its own).
pub struct NothingDeployed;

impl Deployed for NothingDeployed {
    fn ports(&self, _: &str, _: &str) -> Option<Vec<Port>> {
        None
    }
    fn stack_exists(&self, _: &str) -> bool {
        false
    }
}

impl Stack {
    /// Loads a stack file, or the first of [`STACK_FILES`] in a folder. The name defaults to
    /// the folder's name.
    pub fn load(path: &Path, name: Option<&str>) -> Result<Self, StackError> {
        let file = if path.is_dir() {
            STACK_FILES.iter().map(|f| path.join(f)).find(|f| f.is_file()).ok_or_else(|| {
                StackError::new(
                    path,
                    0,
                    "",
                    format!("no stack file here (looked for {})", STACK_FILES.join(", ")),
                )
            })?
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| StackError::new(&file, 0, "", e.to_string()))?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => {
                let dir = if path.is_dir() {
                    path.to_owned()
                } else {
                    path.parent().map(Path::to_owned).unwrap_or_default()
                };
                let dir = dir.canonicalize().unwrap_or(dir);
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            }
        };
        Self::from_text(&file, &text, &name)
    }

    /// Parses stack text and checks what can be checked without the cluster: names, ports,
    /// duplicate jobs, same-stack links and their cycles.
    pub fn from_text(file: &Path, text: &str, name: &str) -> Result<Self, StackError> {
        check_name(name)
            .map_err(|e| StackError::new(file, 0, "stack name", format!("{e}; pass --name")))?;
        let (format, jobs) = parse::parse_stack(file, text)?;
        let stack = Self { name: name.to_owned(), file: file.to_owned(), format, jobs };
        stack.check_links(&NothingDeployed, false)?;
        stack.order()?;
        Ok(stack)
    }

    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().map(|p| &p.job).find(|j| j.name == name)
    }

    /// Checks every link: its target exists (in this stack, or deployed in another); no job
    /// links to itself; no two links of a job share an env prefix. A link to a job without
    /// ports is allowed (seed 001 links to `redis` without listing a port): it orders the
    /// start but sets no variables, and [`Stack::warnings`] says so.
    /// With `cross_stack` false, links to other stacks are not checked.
    pub fn check_links(
        &self,
        deployed: &dyn Deployed,
        cross_stack: bool,
    ) -> Result<(), StackError> {
        for pj in &self.jobs {
            let mut prefixes: BTreeMap<String, &Link> = BTreeMap::new();
            for (i, (link, line)) in pj.job.links.iter().zip(&pj.link_lines).enumerate() {
                let field = format!("{}.links[{i}]", pj.job.name);
                let err = |msg: String| StackError::new(&self.file, *line, field.clone(), msg);
                let target = link.stack_or(&self.name);
                if target == self.name {
                    if link.job == pj.job.name {
                        return Err(err(format!("job {} links to itself", link.job)));
                    }
                    if self.job(&link.job).is_none() {
                        return Err(err(format!(
                            "links to {link}, but this stack has no job {}",
                            link.job
                        )));
                    }
                } else if cross_stack {
                    match deployed.ports(target, &link.job) {
                        Some(_) => {}
                        None if deployed.stack_exists(target) => {
                            return Err(err(format!(
                                "links to {link}, but stack {target} has no job {}",
                                link.job
                            )))
                        }
                        None => {
                            return Err(err(format!(
                            "links to {link}, but stack {target} is not deployed: deploy it first"
                        )))
                        }
                    }
                }
                let prefix = link.env_prefix(&self.name);
                if let Some(other) = prefixes.insert(prefix.clone(), link) {
                    return Err(err(format!("links {other} and {link} would both set {prefix}_* variables; use an alias (job:alias)")));
                }
            }
        }
        Ok(())
    }

    /// What deserves a word but is not an error.
    pub fn warnings(&self, deployed: &dyn Deployed) -> Vec<String> {
        let mut out = Vec::new();
        for pj in &self.jobs {
            for link in &pj.job.links {
                let target = link.stack_or(&self.name);
                let ports = if target == self.name {
                    self.job(&link.job).map(|j| j.ports.clone())
                } else {
                    deployed.ports(target, &link.job)
                };
                if ports.is_some_and(|p| p.is_empty()) {
                    out.push(format!(
                        "{}: link {link} has no ports, so it only orders the start and sets no variables",
                        pj.job.name
                    ));
                }
            }
        }
        out
    }

    /// Job names in start order (linked-to first); a cycle is an error naming it.
    pub fn order(&self) -> Result<Vec<String>, StackError> {
        let deps: BTreeMap<String, BTreeSet<String>> = self
            .jobs
            .iter()
            .map(|pj| {
                let ds = pj
                    .job
                    .links
                    .iter()
                    .filter(|l| l.stack_or(&self.name) == self.name)
                    .map(|l| l.job.clone())
                    .collect();
                (pj.job.name.clone(), ds)
            })
            .collect();
        sequence::order(&deps).map_err(|cycle| {
            let line =
                self.jobs.iter().find(|p| Some(&p.job.name) == cycle.first()).map_or(0, |p| p.line);
            StackError::new(
                &self.file,
                line,
                "links",
                format!("link cycle: {}", cycle.join(" -> ")),
            )
        })
    }
}
