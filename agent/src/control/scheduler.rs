//! The scheduler ("dowding", seed 003): which host runs each instance of each job.
//!
//! Pure: given the jobs, the live hosts, where instances run now and where fixed jobs ran
//! before, it returns where every instance should be. The leader writes that as intent
//! under `/viking/proc/<host>/...`.
//!
//! For each instance: keep it where it is if that host is alive and still fits; else filter
//! the hosts (explicit host, required tags, a fixed job's history host), prefer hosts without
//! an instance of the same job (replicas spread), then the least busy (instances placed so
//! far plus reported load), then the name (deterministic).
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cluster::HostInfo;
use crate::stack::Job;

/// One instance: `(stack, job, index)`.
pub type InstanceId = (String, String, u32);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    Host(String),
    /// Not placed, and why (a fixed job waiting for its host, no host passing the filters).
    Waiting(String),
}

#[derive(Debug, Clone, Default)]
pub struct SchedulerInput {
    /// Every deployed job, by stack.
    pub jobs: Vec<(String, Job)>,
    pub hosts: Vec<HostInfo>,
    /// Where instances are placed now.
    pub current: BTreeMap<InstanceId, String>,
    /// Where a job last ran: `(stack, job)` -> host (fixed jobs return there).
    pub history: BTreeMap<(String, String), String>,
    /// Extra load a host reports (added to its instance count).
    pub load: BTreeMap<String, u32>,
}

fn fits(job: &Job, host: &HostInfo) -> bool {
    job.host.as_deref().is_none_or(|h| h == host.name)
        && job.filter.iter().all(|t| host.tags.contains(t))
        && (!needs_docker(job) || host.runtime.as_deref() != Some("exec"))
}

/// A job with only an image, or a `build:`, runs only where docker does.
fn needs_docker(job: &Job) -> bool {
    job.build.is_some() || (job.image.is_some() && job.command.is_empty())
}

/// Where every instance goes. Instances are taken stack by stack, job by job, index by index.
pub fn schedule(input: &SchedulerInput) -> BTreeMap<InstanceId, Placement> {
    let alive: BTreeMap<&str, &HostInfo> =
        input.hosts.iter().map(|h| (h.name.as_str(), h)).collect();
    let mut busy: BTreeMap<&str, u64> =
        alive.keys().map(|h| (*h, u64::from(input.load.get(*h).copied().unwrap_or(0)))).collect();
    let mut out = BTreeMap::new();
    // First keep what runs where it may stay, so that moves are only what must move.
    let mut kept: BTreeMap<InstanceId, &str> = BTreeMap::new();
    for (stack, job) in &input.jobs {
        for index in 0..job.scale {
            let id = (stack.clone(), job.name.clone(), index);
            if let Some(h) = input.current.get(&id) {
                if let Some(host) = alive.get(h.as_str()) {
                    if fits(job, host) {
                        kept.insert(id, host.name.as_str());
                        *busy.entry(host.name.as_str()).or_default() += 1;
                    }
                }
            }
        }
    }
    for (stack, job) in &input.jobs {
        let mut on: BTreeSet<&str> = BTreeSet::new();
        for index in 0..job.scale {
            if let Some(h) = kept.get(&(stack.clone(), job.name.clone(), index)) {
                on.insert(h);
            }
        }
        for index in 0..job.scale {
            let id = (stack.clone(), job.name.clone(), index);
            if let Some(h) = kept.get(&id) {
                out.insert(id, Placement::Host((*h).to_owned()));
                continue;
            }
            let history = input.history.get(&(stack.clone(), job.name.clone()));
            if job.fixed {
                if let Some(h) = history {
                    let placement = match alive.get(h.as_str()) {
                        Some(host) if fits(job, host) => {
                            *busy.entry(host.name.as_str()).or_default() += 1;
                            Placement::Host(h.clone())
                        }
                        _ => Placement::Waiting(format!(
                            "fixed to host {h}, which is not in the cluster"
                        )),
                    };
                    out.insert(id, placement);
                    continue;
                }
            }
            let best = alive.values().filter(|h| fits(job, h)).min_by_key(|h| {
                (
                    on.contains(h.name.as_str()),
                    busy.get(h.name.as_str()).copied().unwrap_or(0),
                    h.name.as_str(),
                )
            });
            let placement = match best {
                Some(host) => {
                    *busy.entry(host.name.as_str()).or_default() += 1;
                    on.insert(host.name.as_str());
                    Placement::Host(host.name.clone())
                }
                None => Placement::Waiting(why_no_host(job, &input.hosts)),
            };
            out.insert(id, placement);
        }
    }
    out
}

fn why_no_host(job: &Job, hosts: &[HostInfo]) -> String {
    if hosts.is_empty() {
        return "no host in the cluster".into();
    }
    let but_for_docker = |h: &HostInfo| {
        job.host.as_deref().is_none_or(|n| n == h.name)
            && job.filter.iter().all(|t| h.tags.contains(t))
    };
    if needs_docker(job) && hosts.iter().any(but_for_docker) {
        return "it needs docker (an image or a build, without a command), and the hosts that \
                fit run exec"
            .into();
    }
    match (&job.host, job.filter.is_empty()) {
        (Some(h), _) => {
            format!("host {h} is not in the cluster (or lacks the tags {:?})", job.filter)
        }
        (None, false) => format!("no host has the tags {:?}", job.filter),
        (None, true) => "no host fits".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, tags: &[&str]) -> HostInfo {
        HostInfo {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..HostInfo::new(name, "127.0.0.1".parse().unwrap())
        }
    }

    fn job(name: &str, scale: u32) -> Job {
        let mut j = Job::new(name);
        j.scale = scale;
        j
    }

    fn hosts_of(p: &BTreeMap<InstanceId, Placement>, job: &str) -> Vec<String> {
        p.iter()
            .filter(|((_, j, _), _)| j == job)
            .map(|(_, pl)| match pl {
                Placement::Host(h) => h.clone(),
                Placement::Waiting(w) => format!("waiting: {w}"),
            })
            .collect()
    }

    #[test]
    fn replicas_spread_over_hosts() {
        let input = SchedulerInput {
            jobs: vec![("s".into(), job("web", 3))],
            hosts: vec![host("a", &[]), host("b", &[]), host("c", &[])],
            ..Default::default()
        };
        let mut got = hosts_of(&schedule(&input), "web");
        got.sort();
        assert_eq!(got, ["a", "b", "c"]);
    }

    #[test]
    fn tags_and_explicit_hosts_filter() {
        let mut tagged = job("db", 1);
        tagged.filter = vec!["ssd".into()];
        let mut pinned = job("edge", 1);
        pinned.host = Some("c".into());
        let input = SchedulerInput {
            jobs: vec![
                ("s".into(), tagged),
                ("s".into(), pinned),
                ("s".into(), {
                    let mut j = job("gpu", 1);
                    j.filter = vec!["gpu".into()];
                    j
                }),
            ],
            hosts: vec![host("a", &[]), host("b", &["ssd"]), host("c", &[])],
            ..Default::default()
        };
        let p = schedule(&input);
        assert_eq!(hosts_of(&p, "db"), ["b"]);
        assert_eq!(hosts_of(&p, "edge"), ["c"]);
        assert!(hosts_of(&p, "gpu")[0].starts_with("waiting: no host has the tags"));
    }

    #[test]
    fn fixed_jobs_return_to_their_host_or_wait() {
        let mut db = job("db", 1);
        db.fixed = true;
        let mut input = SchedulerInput {
            jobs: vec![("s".into(), db)],
            hosts: vec![host("a", &[]), host("b", &[])],
            history: BTreeMap::from([(("s".into(), "db".into()), "b".into())]),
            ..Default::default()
        };
        assert_eq!(hosts_of(&schedule(&input), "db"), ["b"]);
        input.hosts.retain(|h| h.name != "b");
        assert!(hosts_of(&schedule(&input), "db")[0].contains("fixed to host b"));
    }

    #[test]
    fn running_instances_stay_and_leavers_move() {
        let input = SchedulerInput {
            jobs: vec![("s".into(), job("web", 2))],
            hosts: vec![host("a", &[]), host("b", &[]), host("c", &[])],
            current: BTreeMap::from([
                (("s".into(), "web".into(), 0), "c".into()),
                (("s".into(), "web".into(), 1), "gone".into()),
            ]),
            ..Default::default()
        };
        let p = schedule(&input);
        assert_eq!(p[&("s".into(), "web".into(), 0)], Placement::Host("c".into()));
        assert_eq!(
            p[&("s".into(), "web".into(), 1)],
            Placement::Host("a".into()),
            "least busy, by name"
        );
    }

    #[test]
    fn least_busy_wins() {
        let input = SchedulerInput {
            jobs: vec![
                ("s".into(), job("a", 1)),
                ("s".into(), job("b", 1)),
                ("s".into(), job("c", 1)),
            ],
            hosts: vec![host("x", &[]), host("y", &[])],
            load: BTreeMap::from([("x".into(), 5)]),
            ..Default::default()
        };
        let p = schedule(&input);
        assert_eq!(hosts_of(&p, "a"), ["y"]);
        assert_eq!(hosts_of(&p, "b"), ["y"]);
    }
}
