//! The sequencer: linked-to jobs start before linked-from jobs (seed 000).
use std::collections::{BTreeMap, BTreeSet};

/// Jobs in start order: every job after the jobs it links to (within its stack); ties in
/// name order, so the order is the same every time. `Err` carries a cycle, first job
/// repeated at the end: `["web", "middleware", "web"]`.
pub fn order(deps: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>, Vec<String>> {
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = deps
        .iter()
        .map(|(j, ds)| {
            (j.as_str(), ds.iter().map(String::as_str).filter(|d| deps.contains_key(*d)).collect())
        })
        .collect();
    let mut out = Vec::with_capacity(deps.len());
    loop {
        let ready: Vec<&str> =
            remaining.iter().filter(|(_, ds)| ds.is_empty()).map(|(j, _)| *j).collect();
        if ready.is_empty() {
            break;
        }
        for j in ready {
            remaining.remove(j);
            for ds in remaining.values_mut() {
                ds.remove(j);
            }
            out.push(j.to_owned());
        }
    }
    if remaining.is_empty() {
        return Ok(out);
    }
    // Every job left is on or behind a cycle: walk dependencies until one repeats.
    let mut path: Vec<&str> = Vec::new();
    let mut at = *remaining.keys().next().unwrap_or(&"");
    while !path.contains(&at) {
        path.push(at);
        at = remaining.get(at).and_then(|ds| ds.iter().next().copied()).unwrap_or(at);
    }
    let start = path.iter().position(|j| *j == at).unwrap_or(0);
    let mut cycle: Vec<String> = path[start..].iter().map(|s| (*s).to_owned()).collect();
    cycle.push(at.to_owned());
    Err(cycle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(j, ds)| ((*j).to_owned(), ds.iter().map(|d| (*d).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn linked_to_jobs_come_first() {
        let d = deps(&[
            ("web", &["auth", "catalogue"]),
            ("auth", &["redis"]),
            ("catalogue", &["redis", "pricing"]),
            ("pricing", &[]),
            ("redis", &[]),
        ]);
        let o = order(&d).unwrap();
        let pos = |j: &str| o.iter().position(|x| x == j).unwrap();
        for (j, ds) in &d {
            for dep in ds {
                assert!(pos(dep) < pos(j), "{dep} before {j} in {o:?}");
            }
        }
    }

    #[test]
    fn a_cycle_is_named() {
        let d = deps(&[("web", &["middleware"]), ("middleware", &["web"]), ("db", &[])]);
        let c = order(&d).unwrap_err();
        assert_eq!(c.first(), c.last());
        assert!(c.contains(&"web".to_owned()) && c.contains(&"middleware".to_owned()), "{c:?}");
    }
}
