//! Deploy decisions, pure: given what is deployed (job records, plans, port allocations) and a
//! change (deploy a stack, remove one, apply records, adopt records added by hand), what the
//! store should hold after it, as operations. The deployer reads, decides here, and commits
//! the operations under compares of what it read (`deployer.rs`).
//!
//! Every stack is planned again on every change (in memory; only what differs is written), so
//! plans never go stale when a stack they link to changes. A plan error in another stack than
//! the one changed is kept in that stack's plans (its last good links stay, so its ambassador
//! ports stay, so nothing of it stops); in the changed stack it refuses the change.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnetwork::Ipv4Network;

use super::{
    context,
    folder::{job_key, record_value, stack_prefix, DeployedJobs, JobRecord},
    plans::{plan_key, record_hash, JobPlan, LinkPort, PlannedLink, Plans},
    DeployError,
};
use crate::{
    cluster::{
        ports::{self, PortAllocation, PortKey, PortTable},
        vips::{self, Vip, VipTable},
        PortRange,
    },
    datapath::Algo,
    stack::{
        env::{link_env, LinkPorts},
        plan::{AllocatedPort, Plan, PlannedJob},
        sequence, service_name, Deployed, Job, Port, Stack, StackError,
    },
    store::Op,
};

/// What is deployed, as read at one moment.
#[derive(Debug, Clone, Default)]
pub struct DeployState {
    pub records: DeployedJobs,
    pub plans: Plans,
    pub ports: PortTable,
    /// Every job's virtual IP.
    pub vips: VipTable,
    /// The `build:` contexts stored, by hash.
    pub contexts: BTreeSet<String>,
    /// Whether a host of the cluster runs docker (`None`: not known).
    pub docker: Option<bool>,
}

/// Packed `build:` contexts a deploy carries, by hash.
pub type Contexts = BTreeMap<String, Vec<u8>>;

/// A change to what is deployed.
pub enum Change<'a> {
    /// Replace a stack's jobs with these (and their `build:` contexts).
    Deploy(&'a Stack, &'a Contexts),
    /// Remove a stack; `force` even when other stacks link to it.
    Remove { stack: &'a str, force: bool },
    /// Store these records (`viking config apply`).
    Apply(&'a [JobRecord]),
    /// Plan records that have no current plan (added or edited by hand).
    Adopt,
}

/// What the store should hold after a change.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Empty when nothing changes.
    pub ops: Vec<Op>,
    /// Every plan after the change.
    pub plans: BTreeMap<(String, String), JobPlan>,
    /// Every ambassador port allocation after the change.
    pub allocations: Vec<PortAllocation>,
    /// Every job's virtual IP after the change.
    pub vips: Vec<Vip>,
    /// Plans written (new or changed) and removed.
    pub written: usize,
    pub removed: usize,
}

pub struct Planner {
    /// The address link env vars point containers at.
    pub ambassador: IpAddr,
    pub range: PortRange,
    /// Where jobs' virtual IPs come from.
    pub vips: Ipv4Network,
}

type Id = (String, String);

/// The deployed jobs as `stack::Deployed` sees them (links of a stack checked against them).
struct JobsView<'a>(&'a BTreeMap<Id, Job>);

impl Deployed for JobsView<'_> {
    fn ports(&self, stack: &str, job: &str) -> Option<Vec<Port>> {
        self.0.get(&(stack.to_owned(), job.to_owned())).map(|j| j.ports.clone())
    }
    fn stack_exists(&self, stack: &str) -> bool {
        self.0.keys().any(|(s, _)| s == stack)
    }
}

/// A link before ports are assigned.
struct Pending {
    stack: String,
    job: String,
    prefix: String,
    ports: Vec<(Port, PortKey)>,
    missing: Option<String>,
}

impl Planner {
    pub fn decide(&self, state: &DeployState, change: &Change) -> Result<Decision, DeployError> {
        let mut jobs = state.records.jobs.clone();
        let mut invalid: BTreeMap<Id, StackError> = state
            .records
            .invalid
            .iter()
            .filter_map(|e| Some((record_id(&e.file.to_string_lossy())?, e.clone())))
            .collect();
        let mut record_ops = Vec::new();
        match change {
            Change::Deploy(stack, _) => {
                self.check_deploy(stack, &jobs, &invalid)?;
                check_builds(stack, state.docker)?;
                let name = &stack.name;
                let old: Vec<Id> =
                    jobs.keys().chain(invalid.keys()).filter(|(s, _)| s == name).cloned().collect();
                for id in old {
                    if stack.job(&id.1).is_none() {
                        record_ops.push(Op::delete(job_key(&id.0, &id.1)));
                    }
                    jobs.remove(&id);
                    invalid.remove(&id);
                }
                for pj in &stack.jobs {
                    let id = (name.clone(), pj.job.name.clone());
                    if state.records.jobs.get(&id) != Some(&pj.job) {
                        record_ops
                            .push(Op::put(job_key(name, &pj.job.name), record_value(&pj.job)));
                    }
                    jobs.insert(id, pj.job.clone());
                }
            }
            Change::Remove { stack, force } => {
                let ours = |id: &Id| id.0 == *stack;
                if !jobs.keys().chain(invalid.keys()).any(ours) {
                    return Err(DeployError::NotFound(format!("stack {stack} is not deployed")));
                }
                let by = dependents(&jobs, stack);
                if !force && !by.is_empty() {
                    return Err(DeployError::Dependents { stack: (*stack).to_owned(), by });
                }
                jobs.retain(|id, _| !ours(id));
                invalid.retain(|id, _| !ours(id));
                record_ops.push(Op::DeletePrefix { prefix: stack_prefix(stack) });
            }
            Change::Apply(records) => {
                for r in records.iter() {
                    let id = (r.stack.clone(), r.job.name.clone());
                    if state.records.jobs.get(&id) != Some(&r.job) {
                        record_ops.push(Op::put(r.key.clone(), record_value(&r.job)));
                    }
                    invalid.remove(&id);
                    jobs.insert(id, r.job.clone());
                }
                check_applied_links(records, &jobs)?;
            }
            Change::Adopt => {}
        }
        let cycle = find_cycle(&jobs);
        if let (Some(cycle), Change::Deploy(..) | Change::Apply(_)) = (&cycle, change) {
            let file = match change {
                Change::Deploy(s, _) => s.file.clone(),
                _ => "config".into(),
            };
            return Err(DeployError::Stack(StackError::new(
                file,
                0,
                "links",
                format!("link cycle across stacks: {}", cycle.join(" -> ")),
            )));
        }
        let on_cycle: BTreeSet<&str> = cycle.iter().flatten().map(String::as_str).collect();

        // Links to ports, before ports are assigned.
        let mut wanted: BTreeMap<PortKey, Algo> = BTreeMap::new();
        let mut pending: BTreeMap<Id, Result<Vec<Pending>, String>> = BTreeMap::new();
        for (id, job) in &jobs {
            let prev = state.plans.plans.get(id);
            let planned = if on_cycle.contains(format!("{}/{}", id.0, id.1).as_str()) {
                Err(format!(
                    "link cycle across stacks: {}",
                    cycle.iter().flatten().cloned().collect::<Vec<_>>().join(" -> ")
                ))
            } else {
                self.links(id, job, &jobs, &invalid, prev, &state.ports)
            };
            let keep_from = match &planned {
                Ok(links) => {
                    for l in links {
                        for (_, k) in &l.ports {
                            wanted.insert(k.clone(), self.balance_of(k, &jobs, &state.ports));
                        }
                    }
                    None
                }
                Err(_) => prev,
            };
            // A job that cannot be planned keeps its last plan's ports.
            for k in keep_from.into_iter().flat_map(|p| &p.links).flat_map(|l| &l.ports) {
                wanted.insert(k.key.clone(), self.balance_of(&k.key, &jobs, &state.ports));
            }
            pending.insert(id.clone(), planned);
        }
        // A record that does not parse keeps its last plan, and that plan's ports.
        for id in invalid.keys() {
            for k in
                state.plans.plans.get(id).into_iter().flat_map(|p| &p.links).flat_map(|l| &l.ports)
            {
                wanted.insert(k.key.clone(), self.balance_of(&k.key, &jobs, &state.ports));
            }
        }
        let (allocations, next) = ports::assign(self.range, &state.ports, &wanted)?;
        let port_of: BTreeMap<PortKey, u16> =
            allocations.iter().map(|a| (a.key(), a.ambassador_port)).collect();

        let mut plans = BTreeMap::new();
        for (id, planned) in pending {
            let job = &jobs[&id];
            let plan = match planned {
                Ok(links) => {
                    let links: Vec<PlannedLink> = links
                        .into_iter()
                        .map(|l| PlannedLink {
                            ports: l
                                .ports
                                .into_iter()
                                .map(|(port, key)| LinkPort {
                                    port,
                                    ambassador_port: port_of.get(&key).copied().unwrap_or(0),
                                    key,
                                })
                                .collect(),
                            stack: l.stack,
                            job: l.job,
                            prefix: l.prefix,
                            missing: l.missing,
                        })
                        .collect();
                    let env_links: Vec<LinkPorts> = links
                        .iter()
                        .map(|l| LinkPorts {
                            prefix: l.prefix.clone(),
                            ports: l.ports.iter().map(|p| (p.port, p.ambassador_port)).collect(),
                        })
                        .collect();
                    JobPlan {
                        record: record_hash(job),
                        env: link_env(self.ambassador, &env_links),
                        links,
                        error: None,
                    }
                }
                Err(why) => match state.plans.plans.get(&id) {
                    Some(prev) => JobPlan { error: Some(why), ..prev.clone() },
                    None => JobPlan {
                        record: record_hash(job),
                        links: Vec::new(),
                        env: BTreeMap::new(),
                        error: Some(why),
                    },
                },
            };
            plans.insert(id, plan);
        }
        for id in invalid.keys() {
            if let Some(p) = state.plans.plans.get(id) {
                plans.insert(id.clone(), p.clone());
            }
        }

        let mut decision = Decision { allocations, ..Decision::default() };
        let mut plan_ops = Vec::new();
        for (id, p) in &plans {
            if state.plans.plans.get(id) != Some(p) {
                plan_ops.push(Op::put(
                    plan_key(&id.0, &id.1),
                    serde_json::to_vec(p).unwrap_or_default(),
                ));
                decision.written += 1;
            }
        }
        for id in state.plans.plans.keys().filter(|id| !plans.contains_key(*id)) {
            plan_ops.push(Op::delete(plan_key(&id.0, &id.1)));
            decision.removed += 1;
        }
        for (key, _) in &state.plans.invalid {
            plan_ops.push(Op::delete(key.clone()));
        }
        // Build contexts: stored with the deploy that brings them, dropped with the last
        // record that names them.
        let named: BTreeSet<&String> =
            jobs.values().filter_map(|j| j.build_hash.as_ref()).collect();
        let mut context_ops = Vec::new();
        if let Change::Deploy(_, contexts) = change {
            for (hash, tar) in contexts.iter() {
                if named.contains(hash) && !state.contexts.contains(hash) {
                    context_ops.extend(context::put_ops(hash, tar));
                }
            }
        }
        for hash in state.contexts.iter().filter(|h| !named.contains(h)) {
            context_ops.extend(context::delete_ops(hash));
        }
        record_ops.extend(context_ops);
        // Every job has a VIP; a record that does not parse keeps the one it had.
        let mut wanted_vips: BTreeMap<Id, vips::Wanted> = jobs
            .iter()
            .map(|(id, j)| {
                let w =
                    vips::Wanted { ports: j.ports.clone(), balance: j.balance.unwrap_or_default() };
                (id.clone(), w)
            })
            .collect();
        for id in invalid.keys() {
            if let Some(v) = state.vips.vips.get(id) {
                wanted_vips.insert(
                    id.clone(),
                    vips::Wanted { ports: v.ports.clone(), balance: v.balance },
                );
            }
        }
        decision.vips = vips::assign(self.vips, &state.vips, &wanted_vips)?;
        let vip_ops = vips::ops(&state.vips, &decision.vips);
        let port_ops = ports::ops(&state.ports, &decision.allocations, next);
        // NB: the counter's put is in every write (writers serialize on it), but alone it
        // changes nothing.
        if !record_ops.is_empty()
            || !plan_ops.is_empty()
            || port_ops.len() > 1
            || !vip_ops.is_empty()
        {
            decision.ops =
                record_ops.into_iter().chain(plan_ops).chain(port_ops).chain(vip_ops).collect();
        }
        decision.plans = plans;
        Ok(decision)
    }

    /// The balance an allocation key is for: a link's own variant, or the job's.
    fn balance_of(&self, key: &PortKey, jobs: &BTreeMap<Id, Job>, table: &PortTable) -> Algo {
        if let Some(v) = key.variant {
            return v;
        }
        let job =
            key.service.split_once('_').and_then(|(s, j)| jobs.get(&(s.to_owned(), j.to_owned())));
        match job {
            Some(j) => j.balance.unwrap_or_default(),
            None => table.get(key).map(|a| a.balance).unwrap_or_default(),
        }
    }

    /// A job's links with their allocation keys; a link to a job that is not there keeps the
    /// ports of the last plan, or is an error.
    fn links(
        &self,
        (stack, _): &Id,
        job: &Job,
        jobs: &BTreeMap<Id, Job>,
        invalid: &BTreeMap<Id, StackError>,
        prev: Option<&JobPlan>,
        table: &PortTable,
    ) -> Result<Vec<Pending>, String> {
        let mut out = Vec::new();
        for link in &job.links {
            let (ts, tj) = (link.stack_or(stack).to_owned(), link.job.clone());
            let prefix = link.env_prefix(stack);
            let service = service_name(&ts, &tj);
            match jobs.get(&(ts.clone(), tj.clone())) {
                Some(target) => {
                    let own = target.balance.unwrap_or_default();
                    let want = link.balance.unwrap_or(own);
                    let variant = (want != own).then_some(want);
                    let ports = target
                        .ports
                        .iter()
                        .map(|p| (*p, PortKey { service: service.clone(), port: p.port, variant }))
                        .collect();
                    out.push(Pending { stack: ts, job: tj, prefix, ports, missing: None });
                }
                None => {
                    let why = match invalid.get(&(ts.clone(), tj.clone())) {
                        Some(e) => format!("its record does not parse ({e})"),
                        None if jobs.keys().any(|(s, _)| *s == ts) => {
                            format!("stack {ts} has no job {tj}")
                        }
                        None => format!("stack {ts} is not deployed"),
                    };
                    let carried = prev
                        .and_then(|p| p.links.iter().find(|l| l.stack == ts && l.job == tj))
                        .map(|l| {
                            l.ports
                                .iter()
                                .filter(|p| table.get(&p.key).is_some())
                                .map(|p| (p.port, p.key.clone()))
                                .collect::<Vec<_>>()
                        });
                    match carried {
                        Some(ports) => out.push(Pending {
                            stack: ts,
                            job: tj,
                            prefix,
                            ports,
                            missing: Some(why),
                        }),
                        None => return Err(format!("links to {ts}/{tj}, but {why}")),
                    }
                }
            }
        }
        Ok(out)
    }

    /// A stack's links, checked against what is deployed: every target exists and parses.
    fn check_deploy(
        &self,
        stack: &Stack,
        jobs: &BTreeMap<Id, Job>,
        invalid: &BTreeMap<Id, StackError>,
    ) -> Result<(), DeployError> {
        for pj in &stack.jobs {
            for link in &pj.job.links {
                let target = (link.stack_or(&stack.name).to_owned(), link.job.clone());
                if target.0 != stack.name {
                    if let Some(bad) = invalid.get(&target) {
                        return Err(DeployError::Stack(bad.clone()));
                    }
                }
            }
        }
        let others: BTreeMap<Id, Job> = jobs
            .iter()
            .filter(|(id, _)| id.0 != stack.name)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        stack.check_links(&JobsView(&others), true)?;
        Ok(())
    }

    /// The deploy's answer: the stack's jobs in start order with their link env, and the
    /// ambassador ports its links use.
    pub fn report(
        &self,
        stack: &Stack,
        state: &DeployState,
        decision: &Decision,
    ) -> Result<Plan, DeployError> {
        let mut jobs = Vec::new();
        let mut allocated: BTreeMap<(String, Port), u16> = BTreeMap::new();
        for name in stack.order()? {
            let Some(job) = stack.job(&name) else { continue };
            let plan = decision.plans.get(&(stack.name.clone(), name.clone()));
            for l in plan.into_iter().flat_map(|p| &p.links) {
                for p in &l.ports {
                    allocated.insert((service_name(&l.stack, &l.job), p.port), p.ambassador_port);
                }
            }
            jobs.push(PlannedJob {
                service: service_name(&stack.name, &name),
                link_env: plan.map(|p| p.env.clone()).unwrap_or_default(),
                job: job.clone(),
            });
        }
        let others: BTreeMap<Id, Job> = state
            .records
            .jobs
            .iter()
            .filter(|(id, _)| id.0 != stack.name)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Plan {
            stack: stack.name.clone(),
            jobs,
            ports: allocated
                .into_iter()
                .map(|((service, port), ambassador_port)| AllocatedPort {
                    service,
                    port,
                    ambassador_port,
                })
                .collect(),
            warnings: stack.warnings(&JobsView(&others)),
        })
    }
}

/// Every `build:` of a stack came with its context, and a host can build it.
fn check_builds(stack: &Stack, docker: Option<bool>) -> Result<(), DeployError> {
    for pj in stack.jobs.iter().filter(|pj| pj.job.build.is_some()) {
        let field = format!("{}.build", pj.job.name);
        if pj.job.build_hash.is_none() {
            return Err(DeployError::Stack(StackError::new(
                &stack.file,
                pj.line,
                field,
                "its context did not come with the deploy: deploy with `viking deploy` from \
                 the stack's folder (it packs the context)",
            )));
        }
        if docker == Some(false) {
            return Err(DeployError::Stack(StackError::new(
                &stack.file,
                pj.line,
                field,
                "a build needs the docker runtime, and every host of this cluster runs exec: \
                 use an image or a command, or add a docker host",
            )));
        }
    }
    Ok(())
}

/// `(stack, job)` of a record key.
fn record_id(key: &str) -> Option<Id> {
    let rest = key.strip_prefix(super::folder::PREFIX)?;
    let (s, j) = rest.split_once('/')?;
    (!s.is_empty() && !j.is_empty() && !j.contains('/')).then(|| (s.to_owned(), j.to_owned()))
}

/// The jobs of other stacks that link to `stack`: `web/web (shared/mongo)`.
fn dependents(jobs: &BTreeMap<Id, Job>, stack: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ((s, j), job) in jobs {
        if s == stack {
            continue;
        }
        for l in &job.links {
            if l.stack_or(s) == stack {
                out.push(format!("{s}/{j} ({stack}/{})", l.job));
            }
        }
    }
    out
}

/// Every link of applied records reaches a job that is there.
fn check_applied_links(records: &[JobRecord], jobs: &BTreeMap<Id, Job>) -> Result<(), DeployError> {
    for r in records {
        for (i, l) in r.job.links.iter().enumerate() {
            let target = (l.stack_or(&r.stack).to_owned(), l.job.clone());
            if !jobs.contains_key(&target) {
                let why = if jobs.keys().any(|(s, _)| *s == target.0) {
                    format!("stack {} has no job {}", target.0, target.1)
                } else {
                    format!("stack {} is not deployed", target.0)
                };
                return Err(DeployError::Stack(StackError::new(
                    &r.key,
                    0,
                    format!("links[{i}]"),
                    format!("links to {l}, but {why}"),
                )));
            }
        }
    }
    Ok(())
}

/// A cycle of links across every deployed job, as `stack/job` names (first repeated last).
fn find_cycle(jobs: &BTreeMap<Id, Job>) -> Option<Vec<String>> {
    let deps: BTreeMap<String, BTreeSet<String>> = jobs
        .iter()
        .map(|((s, j), job)| {
            let ds = job.links.iter().map(|l| format!("{}/{}", l.stack_or(s), l.job)).collect();
            (format!("{s}/{j}"), ds)
        })
        .collect();
    sequence::order(&deps).err()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;
    use crate::{
        deploy::folder::{parse_record, DeployedJobs},
        store::{keys, KeyValue},
    };

    /// A store in memory: keys and values, and what a decision's operations do to it.
    #[derive(Default)]
    struct Mem(BTreeMap<String, Vec<u8>>);

    impl Mem {
        fn kvs(&self, prefix: &str) -> Vec<KeyValue> {
            self.0
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| KeyValue::put_at(k, v, 1, None))
                .collect()
        }
        fn state(&self) -> DeployState {
            DeployState {
                records: DeployedJobs::from_kvs(&self.kvs(keys::DEPLOY), 1),
                plans: Plans::from_kvs(&self.kvs(keys::PLANS), 1),
                ports: PortTable::read(&self.kvs(keys::PORTS)).unwrap(),
                vips: VipTable::read(&self.kvs(vips::PREFIX)).unwrap(),
                contexts: crate::deploy::context::stored(&self.kvs(crate::deploy::context::PREFIX)),
                docker: None,
            }
        }
        fn apply(&mut self, ops: &[Op]) {
            for op in ops {
                match op {
                    Op::Put { key, value, .. } => {
                        self.0.insert(key.clone(), value.clone());
                    }
                    Op::Delete { key } => {
                        self.0.remove(key);
                    }
                    Op::DeletePrefix { prefix } => self.0.retain(|k, _| !k.starts_with(prefix)),
                    Op::Get { .. } => {}
                }
            }
        }
        fn change(&mut self, change: &Change) -> Result<Decision, DeployError> {
            let d = planner().decide(&self.state(), change)?;
            self.apply(&d.ops);
            Ok(d)
        }
        fn deploy(&mut self, name: &str, text: &str) -> Result<Decision, DeployError> {
            let stack = Stack::from_text(Path::new("t.yml"), text, name).unwrap();
            self.change(&Change::Deploy(&stack, &Contexts::new()))
        }
        fn plan(&self, stack: &str, job: &str) -> JobPlan {
            self.state().plans.get(stack, job).cloned().unwrap()
        }
        fn ports(&self) -> Vec<(String, u16, u16)> {
            self.state()
                .ports
                .ports
                .iter()
                .map(|a| (a.key().key(), a.port, a.ambassador_port))
                .map(|(k, p, q)| (k.trim_start_matches(keys::PORTS).to_owned(), p, q))
                .collect()
        }
    }

    fn planner() -> Planner {
        Planner {
            ambassador: "127.0.0.1".parse().unwrap(),
            range: PortRange { first: 20000, last: 20099 },
            vips: "10.96.0.0/24".parse().unwrap(),
        }
    }

    const SHARED: &str = "mongo:\n  ports: [27017]\nauth:\n  ports: [80]\n";
    const WEB: &str = "web:\n  command: x\n  links: [shared/mongo, shared/auth]\n";

    #[test]
    fn a_deploy_stores_records_plans_and_the_ports_its_links_use() {
        let mut m = Mem::default();
        m.deploy("shared", SHARED).unwrap();
        assert!(m.ports().is_empty(), "nothing links to shared yet: no port");
        let d = m.deploy("web", WEB).unwrap();
        assert!(!d.ops.is_empty());
        let p = m.plan("web", "web");
        let ports = m.ports();
        assert_eq!(ports.len(), 2);
        let q =
            |svc: &str| ports.iter().find(|(k, _, _)| k.starts_with(svc)).unwrap().2.to_string();
        assert_eq!(p.env["SHARED_MONGO_PORT_27017_TCP_PORT"], q("shared_mongo/27017"));
        assert_eq!(p.env["SHARED_AUTH_PORT_80_TCP_PORT"], q("shared_auth/80"));
        assert_ne!(q("shared_mongo"), q("shared_auth"));
        // Again, unchanged: nothing to write.
        assert!(m.deploy("web", WEB).unwrap().ops.is_empty());
    }

    #[test]
    fn rm_of_a_linked_stack_is_refused_unless_forced_and_the_link_keeps_its_port() {
        let mut m = Mem::default();
        m.deploy("shared", SHARED).unwrap();
        m.deploy("web", WEB).unwrap();
        let env = m.plan("web", "web").env;
        let err = m.change(&Change::Remove { stack: "shared", force: false }).unwrap_err();
        assert!(
            matches!(&err, DeployError::Dependents { by, .. } if by[0].starts_with("web/web")),
            "{err}"
        );
        m.change(&Change::Remove { stack: "shared", force: true }).unwrap();
        let p = m.plan("web", "web");
        assert_eq!(p.env, env, "web keeps its env: no restart");
        assert!(p
            .links
            .iter()
            .all(|l| l.missing.as_deref() == Some("stack shared is not deployed")));
        assert_eq!(m.ports().len(), 2, "its ports stay while web's plan uses them");
        assert!(m.state().plans.get("shared", "mongo").is_none());
        // Back: the same ports, and web's plan is whole again with the same env.
        m.deploy("shared", SHARED).unwrap();
        let p = m.plan("web", "web");
        assert_eq!(p.env, env);
        assert!(p.links.iter().all(|l| l.missing.is_none()));
        // web goes: nothing uses the ports any more.
        m.change(&Change::Remove { stack: "web", force: false }).unwrap();
        assert!(m.ports().is_empty(), "released with their owner: {:?}", m.ports());
    }

    #[test]
    fn every_job_gets_a_vip_kept_across_redeploys_and_released_with_its_stack() {
        let mut m = Mem::default();
        let fig = "pricing:\n  ports: [80, 53/udp]\nweb:\n  command: x\n";
        m.deploy("abc", fig).unwrap();
        m.deploy("xyz", fig).unwrap();
        let vips = |m: &Mem| m.state().vips.vips;
        let before = vips(&m);
        assert_eq!(before.len(), 4);
        let ips: BTreeSet<_> = before.values().map(|v| v.ip).collect();
        assert_eq!(ips.len(), 4, "one address per job: {before:?}");
        let p = &before[&("abc".to_owned(), "pricing".to_owned())];
        assert_eq!(
            p.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["80/tcp", "53/udp"]
        );
        // A redeploy with another port keeps the address and updates the ports.
        m.deploy("abc", "pricing:\n  ports: [8080]\nweb:\n  command: x\n").unwrap();
        let after = vips(&m);
        assert_eq!(after[&("abc".to_owned(), "pricing".to_owned())].ip, p.ip);
        assert_eq!(after[&("abc".to_owned(), "pricing".to_owned())].ports[0].port, 8080);
        // Unchanged: nothing written.
        assert!(m.deploy("xyz", fig).unwrap().ops.is_empty());
        m.change(&Change::Remove { stack: "xyz", force: false }).unwrap();
        let left = vips(&m);
        assert!(left.keys().all(|(s, _)| s == "abc"), "{left:?}");
        assert_eq!(
            left[&("abc".to_owned(), "web".to_owned())].ip,
            before[&("abc".to_owned(), "web".to_owned())].ip
        );
    }

    #[test]
    fn a_redeploy_that_drops_a_link_releases_its_port() {
        let mut m = Mem::default();
        m.deploy("shared", SHARED).unwrap();
        m.deploy("web", WEB).unwrap();
        let mongo = m.plan("web", "web").env["SHARED_MONGO_PORT_27017_TCP_PORT"].clone();
        m.deploy("web", "web:\n  command: x\n  links: [shared/mongo]\n").unwrap();
        assert_eq!(m.ports(), [("shared_mongo/27017".into(), 27017, mongo.parse().unwrap())]);
    }

    #[test]
    fn cycles_across_stacks_are_refused_and_named() {
        let mut m = Mem::default();
        m.deploy("a", "x:\n  ports: [1]\n").unwrap();
        m.deploy("b", "y:\n  ports: [2]\n  links: [a/x]\n").unwrap();
        let err = m.deploy("a", "x:\n  ports: [1]\n  links: [b/y]\n").unwrap_err();
        assert!(err.to_string().contains("link cycle across stacks: "), "{err}");
        assert!(err.to_string().contains("a/x") && err.to_string().contains("b/y"), "{err}");
        assert!(m.plan("a", "x").links.is_empty(), "nothing stored");
    }

    #[test]
    fn balance_is_the_jobs_unless_a_link_asks_for_its_own() {
        let mut m = Mem::default();
        m.deploy("shared", "mongo:\n  ports: [27017]\n  balance: least_conn\n").unwrap();
        m.deploy("web", "a:\n  links: [shared/mongo]\nb:\n  links:\n    - {to: shared/mongo, balance: random}\n").unwrap();
        let t = m.state().ports;
        let own = t.get(&PortKey::new("shared_mongo", 27017)).unwrap();
        assert_eq!(own.balance, Algo::LeastConn);
        let var = t
            .get(&PortKey { variant: Some(Algo::Random), ..PortKey::new("shared_mongo", 27017) })
            .unwrap();
        assert_eq!(var.balance, Algo::Random);
        assert_ne!(own.ambassador_port, var.ambassador_port);
        assert_eq!(
            m.plan("web", "b").env["SHARED_MONGO_PORT_27017_TCP_PORT"],
            var.ambassador_port.to_string()
        );
    }

    #[test]
    fn records_added_by_hand_are_adopted_and_a_bad_one_stops_nothing_else() {
        let mut m = Mem::default();
        m.deploy("shared", SHARED).unwrap();
        m.deploy("web", WEB).unwrap();
        let good = parse_record("/viking/deploy/web/extra", b"links: [shared/mongo]\ncommand: y\n")
            .unwrap();
        m.apply(&[Op::put(good.key.clone(), b"links: [shared/mongo]\ncommand: y\n".to_vec())]);
        m.apply(&[Op::put("/viking/deploy/web/bad", b"links: [nowhere/db]\n".to_vec())]);
        m.change(&Change::Adopt).unwrap();
        let web = m.plan("web", "web").env;
        assert_eq!(
            m.plan("web", "extra").env["SHARED_MONGO_PORT_27017_TCP_PORT"],
            web["SHARED_MONGO_PORT_27017_TCP_PORT"]
        );
        let bad = m.plan("web", "bad");
        assert!(
            bad.error.as_deref().is_some_and(|e| e.contains("stack nowhere is not deployed")),
            "{bad:?}"
        );
        assert!(m.plan("web", "web").error.is_none());
        // Adopting again writes nothing.
        assert!(m.change(&Change::Adopt).unwrap().ops.is_empty());
        // A record that does not parse keeps the plan it had.
        let before = m.plan("web", "extra");
        m.apply(&[Op::put("/viking/deploy/web/extra", b"ports: [banana]\n".to_vec())]);
        m.change(&Change::Adopt).unwrap();
        assert_eq!(m.plan("web", "extra"), before);
        assert_eq!(m.ports().len(), 2, "its ports stay");
    }

    #[test]
    fn applied_records_must_link_to_what_is_there() {
        let mut m = Mem::default();
        let r = parse_record("/viking/deploy/web/a", b"links: [other/db]\n").unwrap();
        let err = m.change(&Change::Apply(&[r])).unwrap_err();
        assert!(err.to_string().contains("stack other is not deployed"), "{err}");
        assert!(m.0.is_empty());
    }

    #[test]
    fn build_contexts_come_and_go_with_the_records_that_name_them() {
        let mut m = Mem::default();
        let mut stack =
            Stack::from_text(Path::new("t.yml"), "web:\n  build: web\n  ports: [80]\n", "s")
                .unwrap();
        let err = m.change(&Change::Deploy(&stack, &Contexts::new())).unwrap_err().to_string();
        assert!(err.contains("t.yml:2: web.build: its context did not come"), "{err}");
        let tar = b"a tar".to_vec();
        let hash = context::hash(&tar);
        stack.jobs[0].job.build_hash = Some(hash.clone());
        let contexts = Contexts::from([(hash.clone(), tar)]);
        m.change(&Change::Deploy(&stack, &contexts)).unwrap();
        assert!(m.0.contains_key(&format!("{}{hash}", context::PREFIX)));
        let again = m.change(&Change::Deploy(&stack, &contexts)).unwrap();
        let keys: Vec<&str> = again.ops.iter().map(Op::key).collect();
        assert!(keys.is_empty(), "stored once: {keys:?}");
        m.deploy("s", "web:\n  image: x\n  ports: [80]\n").unwrap();
        assert!(
            m.0.keys().all(|k| !k.contains("contexts")),
            "dropped with the last record naming it"
        );
        // A cluster whose hosts all run exec cannot build.
        let mut state = m.state();
        state.docker = Some(false);
        let err =
            planner().decide(&state, &Change::Deploy(&stack, &contexts)).unwrap_err().to_string();
        assert!(err.contains("web.build: a build needs the docker runtime"), "{err}");
    }
}
