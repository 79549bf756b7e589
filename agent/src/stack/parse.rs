//! Stack files in three formats, detected from their shape:
//! - viking (seed 000): top-level keys are jobs with `type: job`, `link`, `volume`, ...
//! - fig (seed 001): top-level keys are services with `links`, `build`, `environment`, ...
//! - compose: a top-level `services:` mapping.
//!
//! All three read into the same [`Job`]s; every error names file, line and field.
use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

use crate::datapath::Algo;

use super::{
    error::StackError,
    job::{Job, Port},
    names::{check_name, Link},
    yaml::{Node, Value},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Viking,
    Fig,
    Compose,
}

/// A job with the lines its parts came from, for errors found later (links, deploy).
#[derive(Debug, Clone)]
pub struct ParsedJob {
    pub job: Job,
    pub line: usize,
    /// The line of each of `job.links`, in order.
    pub link_lines: Vec<usize>,
}

/// Compose keys Viking reads past without using (documented in docs/stack-format.md).
const COMPOSE_IGNORED: &[&str] = &[
    "container_name",
    "depends_on",
    "healthcheck",
    "hostname",
    "labels",
    "logging",
    "networks",
    "restart",
    "stdin_open",
    "tty",
    "user",
    "working_dir",
];

struct Ctx<'a> {
    file: &'a Path,
    prefix: String,
}

impl Ctx<'_> {
    fn err(&self, node: &Node, field: &str, msg: impl Into<String>) -> StackError {
        StackError::new(self.file, node.line, format!("{}{field}", self.prefix), msg)
    }
    fn scalar<'n>(&self, node: &'n Node, field: &str) -> Result<&'n str, StackError> {
        node.as_scalar().ok_or_else(|| {
            self.err(node, field, format!("expected a value, found {}", node.kind()))
        })
    }
    fn list<'n>(&self, node: &'n Node, field: &str) -> Result<Vec<&'n Node>, StackError> {
        match &node.value {
            Value::Seq(items) => Ok(items.iter().collect()),
            Value::Null => Ok(Vec::new()),
            Value::Scalar(_) => Ok(vec![node]),
            Value::Map(_) => Err(self.err(node, field, "expected a list, found a mapping")),
        }
    }
    fn strings(&self, node: &Node, field: &str) -> Result<Vec<String>, StackError> {
        self.list(node, field)?
            .into_iter()
            .enumerate()
            .map(|(i, n)| self.scalar(n, &format!("{field}[{i}]")).map(str::to_owned))
            .collect()
    }
    fn boolean(&self, node: &Node, field: &str) -> Result<bool, StackError> {
        match self.scalar(node, field)? {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            other => Err(self.err(node, field, format!("{other:?} is not true or false"))),
        }
    }
}

/// Parses a stack file's text.
pub fn parse_stack(file: &Path, text: &str) -> Result<(Format, Vec<ParsedJob>), StackError> {
    let root = super::yaml::parse(file, text)?;
    let top = root.as_map().ok_or_else(|| {
        StackError::new(
            file,
            root.line,
            "",
            format!("a stack file is a mapping of jobs, found {}", root.kind()),
        )
    })?;
    let (format, jobs, prefix) = match root.get("services") {
        Some(services) if services.as_map().is_some() => {
            for (k, v) in top {
                let key = k.as_scalar().unwrap_or_default();
                if !matches!(key, "services" | "version" | "volumes" | "networks" | "name") {
                    return Err(StackError::new(
                        file,
                        k.line,
                        key,
                        "unknown top-level key in a compose file",
                    ));
                }
                let _ = v;
            }
            (Format::Compose, services.as_map().unwrap_or_default(), "services.")
        }
        _ => {
            let viking = top
                .iter()
                .any(|(_, j)| ["type", "link", "volume"].iter().any(|k| j.get(k).is_some()));
            (if viking { Format::Viking } else { Format::Fig }, top, "")
        }
    };
    let mut out: Vec<ParsedJob> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (k, v) in jobs {
        let ctx = Ctx { file, prefix: prefix.to_owned() };
        let name = ctx.scalar(k, "")?.to_owned();
        if let Some(first) = seen.insert(name.clone(), k.line) {
            return Err(ctx.err(
                k,
                &name,
                format!("duplicate job (first defined at line {first})"),
            ));
        }
        let parsed = parse_job(file, &name, v, prefix, format == Format::Compose)?;
        if parsed.job.build_hash.is_some() {
            return Err(ctx.err(
                k,
                &format!("{name}.build_hash"),
                "set by `viking deploy`, not in a stack file",
            ));
        }
        out.push(parsed);
    }
    Ok((format, out))
}

/// Parses one job (a node of a stack file, or a job file of the deployment config folder).
pub fn parse_job(
    file: &Path,
    name: &str,
    node: &Node,
    prefix: &str,
    compose: bool,
) -> Result<ParsedJob, StackError> {
    let ctx = Ctx { file, prefix: format!("{prefix}{name}.") };
    check_name(name).map_err(|e| StackError::new(file, node.line, format!("{prefix}{name}"), e))?;
    let fields = match &node.value {
        Value::Map(m) => m.as_slice(),
        Value::Null => &[],
        _ => {
            return Err(StackError::new(
                file,
                node.line,
                format!("{prefix}{name}"),
                format!("a job is a mapping, found {}", node.kind()),
            ))
        }
    };
    let mut job = Job::new(name);
    let mut link_lines = Vec::new();
    let (mut daemonize, mut fixed) = (None, None);
    for (k, v) in fields {
        let key = ctx.scalar(k, "")?;
        match key {
            "name" => {
                if ctx.scalar(v, key)? != name {
                    return Err(ctx.err(
                        v,
                        key,
                        format!(
                            "job file says {:?} but is filed as {name:?}",
                            v.as_scalar().unwrap_or_default()
                        ),
                    ));
                }
            }
            "type" => {
                let t = ctx.scalar(v, key)?;
                if t != "job" && t != "service" {
                    return Err(ctx.err(v, key, format!("unknown type {t:?} (job)")));
                }
            }
            "image" => job.image = Some(ctx.scalar(v, key)?.to_owned()),
            // NB: written by `viking deploy` into job records; refused in stack files.
            "build_hash" => job.build_hash = Some(ctx.scalar(v, key)?.to_owned()),
            "build" => {
                let b = match v.get("context") {
                    Some(c) => ctx.scalar(c, "build.context")?,
                    None => ctx.scalar(v, key)?,
                };
                job.build = Some(b.to_owned());
            }
            "command" => {
                job.command = match &v.value {
                    Value::Scalar(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
                    _ => ctx.strings(v, key)?,
                }
            }
            "ports" | "expose" => {
                for (i, p) in ctx.list(v, key)?.into_iter().enumerate() {
                    let field = format!("{key}[{i}]");
                    let port: Port =
                        ctx.scalar(p, &field)?.parse().map_err(|e| ctx.err(p, &field, e))?;
                    if !job.ports.contains(&port) {
                        job.ports.push(port);
                    }
                }
            }
            "volume" | "volumes" => job.volumes.extend(ctx.strings(v, key)?),
            "link" | "links" => {
                for (i, l) in ctx.list(v, key)?.into_iter().enumerate() {
                    let field = format!("{key}[{i}]");
                    let link = link(&ctx, l, &field)?;
                    if !job.links.iter().any(|o| {
                        o.stack == link.stack && o.job == link.job && o.alias == link.alias
                    }) {
                        job.links.push(link);
                        link_lines.push(l.line);
                    }
                }
            }
            "env" | "environment" => job.env.extend(env(&ctx, v, key)?),
            "tags" => job.tags = ctx.strings(v, key)?,
            "filter" => job.filter = ctx.strings(v, key)?,
            "host" => job.host = Some(ctx.scalar(v, key)?.to_owned()),
            "scale" => job.scale = count(&ctx, v, key)?,
            "deploy" if compose => {
                if let Some(r) = v.get("replicas") {
                    job.scale = count(&ctx, r, "deploy.replicas")?;
                }
            }
            "daemonize" | "deamonize" => daemonize = Some(ctx.boolean(v, key)?),
            "fixed" => fixed = Some(ctx.boolean(v, key)?),
            "static" => job.is_static = ctx.boolean(v, key)?,
            "balance" => job.balance = Some(balance(&ctx, v, key)?),
            other if compose && COMPOSE_IGNORED.contains(&other) => {}
            other => return Err(ctx.err(k, other, "unknown field")),
        }
    }
    job.daemonize = daemonize.unwrap_or(!job.ports.is_empty());
    // NB: seed 003: a job with volumes, or with VIKING_FIXED in its environment, is fixed.
    let fixed_env = job
        .env
        .get("VIKING_FIXED")
        .is_some_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "no"));
    job.fixed = fixed.unwrap_or(!job.volumes.is_empty() || job.is_static || fixed_env);
    Ok(ParsedJob { job, line: node.line, link_lines })
}

/// A link: `stack/job[:alias]`, or a mapping `{to: stack/job[:alias], balance: least_conn}`.
fn link(ctx: &Ctx, l: &Node, field: &str) -> Result<Link, StackError> {
    if l.as_map().is_none() {
        return Link::parse(ctx.scalar(l, field)?).map_err(|e| ctx.err(l, field, e));
    }
    let mut to = None;
    let mut bal = None;
    for (k, v) in l.as_map().unwrap_or_default() {
        match ctx.scalar(k, field)? {
            "to" | "link" | "name" => {
                let f = format!("{field}.to");
                to = Some(Link::parse(ctx.scalar(v, &f)?).map_err(|e| ctx.err(v, &f, e))?);
            }
            "balance" => bal = Some(balance(ctx, v, &format!("{field}.balance"))?),
            other => {
                return Err(ctx.err(k, &format!("{field}.{other}"), "unknown field (to, balance)"))
            }
        }
    }
    let mut link = to.ok_or_else(|| ctx.err(l, field, "a link mapping needs `to: stack/job`"))?;
    link.balance = bal;
    Ok(link)
}

fn balance(ctx: &Ctx, v: &Node, key: &str) -> Result<Algo, StackError> {
    let s = ctx.scalar(v, key)?;
    match s {
        "random" | "round_robin" | "least_conn" => {
            s.parse().map_err(|e: String| ctx.err(v, key, e))
        }
        other => Err(ctx.err(
            v,
            key,
            format!("{other:?} is not a balance (random, round_robin, least_conn)"),
        )),
    }
}

fn count(ctx: &Ctx, v: &Node, key: &str) -> Result<u32, StackError> {
    let s = ctx.scalar(v, key)?;
    match s.parse::<u32>() {
        Ok(n) if n <= 10_000 => Ok(n),
        _ => Err(ctx.err(v, key, format!("{s:?} is not a count (0-10000)"))),
    }
}

fn env(ctx: &Ctx, v: &Node, key: &str) -> Result<Vec<(String, String)>, StackError> {
    let mut out = Vec::new();
    match &v.value {
        Value::Map(m) => {
            for (k, val) in m {
                let name = ctx.scalar(k, key)?.to_owned();
                let value = match &val.value {
                    Value::Null => String::new(),
                    _ => ctx.scalar(val, &format!("{key}.{name}"))?.to_owned(),
                };
                out.push((name, value));
            }
        }
        _ => {
            for (i, item) in ctx.list(v, key)?.into_iter().enumerate() {
                let field = format!("{key}[{i}]");
                let s = ctx.scalar(item, &field)?;
                let (n, val) = s.split_once('=').unwrap_or((s, ""));
                out.push((n.to_owned(), val.to_owned()));
            }
        }
    }
    for (name, _) in &out {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ctx.err(v, key, format!("{name:?} is not an environment variable name")));
        }
    }
    Ok(out)
}
