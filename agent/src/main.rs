//! The `viking` binary: the per-host agent and the CLI.
mod cli;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Parser, Subcommand};
use viking::{
    api::{client::ApiClient, token, DEFAULT_API},
    datapath::{mounts, Algo, DatapathConfig, Proto},
    runtime::RuntimeKind,
};

#[derive(Parser)]
#[command(
    name = "viking",
    version,
    about = "Stacks of containerised services, wired in the kernel"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct NodeArgs {
    /// This host's name in the cluster (default: the hostname).
    #[arg(long, env = "VIKING_NODE")]
    node: Option<String>,
    /// bpffs directory for this node's pinned maps and links (default: /sys/fs/bpf/viking/NODE).
    #[arg(long, env = "VIKING_BPFFS")]
    bpffs: Option<PathBuf>,
}

impl NodeArgs {
    fn node(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        })
    }
    fn bpffs(&self) -> PathBuf {
        self.bpffs.clone().unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/viking").join(self.node()))
    }
}

/// Where the CLI finds the API.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// Any node's API (`HOST:PORT` or URL).
    #[arg(long, env = "VIKING_SERVER", default_value = DEFAULT_API)]
    server: String,
    /// The API token (root-only file written by the agent; or set VIKING_TOKEN).
    #[arg(long, env = "VIKING_TOKEN_FILE", default_value = token::DEFAULT_TOKEN_FILE)]
    token_file: PathBuf,
    /// The CA certificate (PEM) that signed the agent's API certificate: talk TLS, verified.
    #[arg(long, env = "VIKING_API_CA")]
    api_ca: Option<PathBuf>,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let token = token::read_local(&self.token_file)?;
        Ok(ApiClient::with_ca(&self.server, token, self.api_ca.as_deref())?)
    }
}

// NB: parsed once per process; boxing the agent's arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the per-host agent.
    Agent {
        #[command(flatten)]
        node: NodeArgs,
        /// cgroup v2 directory whose sockets the datapath serves (default: the v2 root).
        #[arg(long, env = "VIKING_CGROUP")]
        cgroup: Option<PathBuf>,
        /// Detach the programs and delete every pin of this node, then exit.
        #[arg(long)]
        cleanup: bool,
        /// The store, and etcd's TLS files.
        #[command(flatten)]
        store: cli::store_args::StoreArgs,
        /// Where this agent serves the API (without TLS: a loopback address, unless
        /// --api-insecure).
        #[arg(long, env = "VIKING_API", default_value = DEFAULT_API)]
        api: SocketAddr,
        #[command(flatten)]
        tls: cli::tls_args::AgentTlsArgs,
        /// The address other hosts reach this one on: the overlay's underlay, registrations,
        /// the leader's API (default: the API's when it is a specific address, else the
        /// address the default route leaves from).
        #[arg(long, env = "VIKING_ADDRESS")]
        address: Option<IpAddr>,
        /// How instances on different hosts reach each other: vxlan (hosts routed to each
        /// other) or host-gw (hosts on one L2 segment).
        #[arg(long, value_enum, default_value = "vxlan", env = "VIKING_OVERLAY")]
        overlay: viking::overlay::Mode,
        /// The overlay's UDP port (hosts must accept it from each other).
        #[arg(long, default_value_t = viking::overlay::DEFAULT_VXLAN_PORT)]
        overlay_port: u16,
        /// The overlay's VXLAN network identifier (the same on every host).
        #[arg(long, default_value_t = viking::overlay::DEFAULT_VNI)]
        overlay_vni: u32,
        /// Where stacks' subnets and instance addresses come from (the same on every host;
        /// it must collide with no route of a host).
        #[arg(long, default_value = viking::cluster::addresses::DEFAULT_POOL)]
        overlay_pool: ipnetwork::Ipv4Network,
        /// The DNS responder (docs/names.md).
        #[command(flatten)]
        names: viking::names::NamesArgs,
        /// This host's scheduling tags.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The ambassador address containers' link env vars point at.
        #[arg(long, default_value = "127.0.0.1")]
        ambassador: IpAddr,
        #[arg(long, env = "VIKING_TOKEN_FILE", default_value = token::DEFAULT_TOKEN_FILE)]
        token_file: PathBuf,
        /// How instances run (default: docker when its socket exists, else exec).
        #[arg(long, value_enum, env = "VIKING_RUNTIME")]
        runtime: Option<RuntimeKind>,
        /// The Docker API socket.
        #[arg(long, default_value = "/var/run/docker.sock")]
        docker_socket: PathBuf,
        /// Instance state, logs and volumes (default: /var/lib/viking/NODE).
        #[arg(long, env = "VIKING_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Stop this host's instances when the agent stops (default: they keep running and
        /// the next agent adopts them).
        #[arg(long)]
        drain: bool,
        /// The network namespace that is this host's network, when the agent runs outside it
        /// (several "hosts" on one machine: the demo and the tests). Instances are plumbed
        /// and routed there.
        #[arg(long)]
        host_netns: Option<PathBuf>,
        /// The VPC policy folder (docs/vpc-rules.md): filter inbound traffic as its files say,
        /// reloaded when they change. Without it the host has no filter.
        #[arg(long, env = "VIKING_VPC_RULES")]
        vpc_rules: Option<PathBuf>,
        /// How the VPC filter attaches: TCX where the kernel has it (auto), or a clsact qdisc.
        #[arg(long, value_enum, default_value_t = viking::vpc::AttachMode::Auto)]
        vpc_attach: viking::vpc::AttachMode,
    },
    /// Deploy a stack (a stack file, or a folder holding one).
    Deploy {
        path: PathBuf,
        /// The stack's name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// Print the plan (order, env, ports) and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Follow the rollout until every instance runs (placed, started, registered, in
        /// the datapath): exit 0; or one fails: exit 1; or --timeout passes: exit 2.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// This host at a glance: the leader, members, store health, datapath, last sync,
    /// instances by state, readiness.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a deployed stack (refused while other stacks link to it, unless --force).
    Rm {
        stack: String,
        /// Remove it even though other stacks link to it: their links keep their ambassador
        /// ports and refuse connections until it is deployed again.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List deployed stacks.
    Stacks {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every instance: where it runs and what it is doing (or why it waits).
    Ps {
        /// Only this stack.
        #[arg(long)]
        stack: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run a job that runs to completion where the scheduler places it, with stdin and
    /// stdout attached, and exit with its code: `echo hi | viking run S/J`.
    Run {
        target: String,
        /// Run it on this host only (seed 003).
        #[arg(long = "viking-host")]
        host: Option<String>,
        /// Run it on a host with this tag (repeat for more; seed 003).
        #[arg(long = "viking-filter")]
        filter: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The link environment a job gets: `viking env STACK/JOB`.
    Env {
        target: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The deployment config folder, to and from a real folder `<stack>/<job>.json`.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Cluster members (from the store): address, tags, capacity, lease, who leads.
    Hosts {
        #[command(flatten)]
        store: cli::store_args::StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Resolve NAME through this host's DNS responder as an instance of --stack would
    /// (its search path), printing each name tried (docs/names.md).
    Dig {
        name: String,
        /// The stack whose instance asks (`pricing` then means that stack's).
        #[arg(long)]
        stack: Option<String>,
        /// The record type: A, AAAA, SRV, ...
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        /// The responder (the agent's --dns-listen).
        #[arg(long, default_value = viking::names::DEFAULT_LISTEN)]
        server: SocketAddr,
        /// Viking's domain (the agent's --dns-domain).
        #[arg(long, default_value = viking::names::DEFAULT_DOMAIN)]
        domain: String,
        /// The host's network namespace, when its agent runs with --host-netns.
        #[arg(long)]
        host_netns: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// This host's overlay peers: what its kernel holds for each member (VTEP, routes to its
    /// instances) and why a member is left out.
    Peers {
        /// This host's name (default: the hostname).
        #[arg(long, env = "VIKING_NODE")]
        node: Option<String>,
        /// The host's network namespace, when its agent runs with --host-netns.
        #[arg(long)]
        host_netns: Option<PathBuf>,
        #[command(flatten)]
        store: cli::store_args::StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// What the allocators hold: ambassador ports, stack subnets, container addresses.
    Allocations {
        #[command(flatten)]
        store: cli::store_args::StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// List the services in the kernel datapath with backends and connection counts.
    Services {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Program the datapath by hand (operators, debugging); the agent does this from the store.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// The VPC host filter: check policy files, see what is in force, reload.
    #[command(subcommand)]
    Vpc(VpcCmd),
}

#[derive(Subcommand)]
enum VpcCmd {
    /// Validate policy files (errors name the file, line and field; exit 1 on any).
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Show what applies on a host with these tags.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// The policy in force on this host, each rule's counters, the member set.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Read the policy folder now; --force applies it even if it would shut out a connection
    /// established now (the lockout guard).
    Reload {
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Write every deployed job to DIR/<stack>/<job>.json.
    Export {
        dir: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Store every DIR/<stack>/<job>.(json|yaml) as a deployed job (all or nothing).
    Apply {
        dir: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Install or replace a service.
    Add {
        #[command(flatten)]
        node: NodeArgs,
        /// Service name shown by `viking services`.
        name: String,
        /// The ambassador address clients connect to.
        #[arg(long)]
        frontend: SocketAddr,
        #[arg(long, default_value = "tcp")]
        proto: Proto,
        /// random, round_robin or least_conn.
        #[arg(long, default_value = "random")]
        algo: Algo,
        /// A backend address (repeat for more; none makes connects fail with ECONNREFUSED).
        #[arg(long = "backend")]
        backends: Vec<SocketAddr>,
        #[command(flatten)]
        health: cli::services::HealthArgs,
    },
    /// Remove a service.
    Rm {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        frontend: SocketAddr,
        #[arg(long, default_value = "tcp")]
        proto: Proto,
    },
}

fn main() -> anyhow::Result<()> {
    // NB: before the runtime's threads exist, so that they share one arena.
    viking::memory::tune();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    viking::logging::init(cli.log_json)?;
    match cli.command {
        Command::Agent {
            node,
            cgroup,
            cleanup,
            store,
            api,
            tls,
            address,
            tags,
            ambassador,
            token_file,
            runtime,
            docker_socket,
            data_dir,
            drain,
            host_netns,
            overlay,
            overlay_port,
            overlay_vni,
            overlay_pool,
            names,
            vpc_rules,
            vpc_attach,
        } => {
            if cleanup {
                return cli::agent::cleanup(&node.bpffs());
            }
            let cgroup = match cgroup {
                Some(c) => c,
                None => mounts::cgroup2_root()?,
            };
            let address = address.or_else(|| {
                let ip = api.ip();
                (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
            });
            let name = node.node();
            let runtime = runtime.unwrap_or(if docker_socket.exists() {
                RuntimeKind::Docker
            } else {
                RuntimeKind::Exec
            });
            cli::agent::run(cli::agent::AgentConfig {
                data_dir: data_dir.unwrap_or_else(|| PathBuf::from("/var/lib/viking").join(&name)),
                run_dir: PathBuf::from("/run/viking").join(&name),
                node: name,
                runtime,
                docker_socket,
                drain,
                host_netns,
                vpc_rules,
                vpc_attach,
                datapath: DatapathConfig { cgroup, bpffs: node.bpffs() },
                store: store.store.clone(),
                etcd: store.etcd(),
                api,
                address,
                tags,
                token_file,
                ambassador,
                api_tls: tls.cert_and_key(),
                api_ca: tls.api_ca,
                api_insecure: tls.api_insecure,
                overlay: cli::agent::OverlayArgs {
                    mode: overlay,
                    port: overlay_port,
                    vni: overlay_vni,
                    pool: overlay_pool,
                },
                names,
            })
            .await
        }
        Command::Deploy { path, name, dry_run, json, wait, timeout, api } => {
            let client = api.client()?;
            let stack = cli::stacks::deploy(&client, &path, name.as_deref(), dry_run, json).await?;
            if wait && !dry_run {
                let code = cli::status::wait(&client, &stack, timeout, json).await?;
                std::process::exit(code)
            }
            Ok(())
        }
        Command::Status { json, api } => cli::status::show(&api.client()?, json).await,
        Command::Ps { stack, json, api } => {
            cli::instances::ps(&api.client()?, stack.as_deref(), json).await
        }
        Command::Run { target, host, filter, api } => {
            let code =
                cli::instances::run(&api.client()?, &target, host.as_deref(), &filter).await?;
            std::process::exit(code)
        }
        Command::Rm { stack, force, api } => {
            cli::stacks::remove(&api.client()?, &stack, force).await
        }
        Command::Stacks { json, api } => cli::stacks::list(&api.client()?, json).await,
        Command::Env { target, json, api } => cli::stacks::env(&api.client()?, &target, json).await,
        Command::Config(ConfigCmd::Export { dir, api }) => {
            cli::stacks::export(&api.client()?, &dir).await
        }
        Command::Config(ConfigCmd::Apply { dir, api }) => {
            cli::stacks::apply(&api.client()?, &dir).await
        }
        Command::Hosts { store, json } => cli::hosts::list(&store, json).await,
        Command::Dig { name, stack, qtype, server, domain, host_netns, json } => {
            cli::names::dig(&name, stack.as_deref(), &qtype, server, &domain, host_netns, json)
                .await
        }
        Command::Peers { node, host_netns, store, json } => {
            let node = NodeArgs { node, bpffs: None }.node();
            cli::peers::list(&store, &node, host_netns, json).await
        }
        Command::Allocations { store, json } => cli::allocations::list(&store, json).await,
        Command::Services { node, json } => cli::services::list(&node.bpffs(), json),
        Command::Service(ServiceCmd::Add {
            node,
            name,
            frontend,
            proto,
            algo,
            backends,
            health,
        }) => cli::services::add(&node.bpffs(), name, frontend, proto, algo, backends, health),
        Command::Service(ServiceCmd::Rm { node, frontend, proto }) => {
            cli::services::remove(&node.bpffs(), frontend, proto)
        }
        Command::Vpc(VpcCmd::Check { files, tags }) => {
            let ok = cli::vpc::check(&files, &tags)?;
            std::process::exit(if ok { 0 } else { 1 })
        }
        Command::Vpc(VpcCmd::Status { json, api }) => cli::vpc::status(&api.client()?, json).await,
        Command::Vpc(VpcCmd::Reload { force, api }) => {
            cli::vpc::reload(&api.client()?, force).await
        }
    }
}
