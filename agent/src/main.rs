//! The `viking` binary: the per-host agent and the CLI.
mod cli;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use viking::datapath::{mounts, Algo, DatapathConfig, Proto};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    viking::logging::init(cli.log_json)?;
    match cli.command {
        Command::Agent { node, cgroup, cleanup } => {
            if cleanup {
                return cli::agent::cleanup(&node.bpffs());
            }
            let cgroup = match cgroup {
                Some(c) => c,
                None => mounts::cgroup2_root()?,
            };
            cli::agent::run(&node.node(), DatapathConfig { cgroup, bpffs: node.bpffs() }).await
        }
        Command::Services { node, json } => cli::services::list(&node.bpffs(), json),
        Command::Service(ServiceCmd::Add { node, name, frontend, proto, algo, backends }) => {
            cli::services::add(&node.bpffs(), name, frontend, proto, algo, backends)
        }
        Command::Service(ServiceCmd::Rm { node, frontend, proto }) => {
            cli::services::remove(&node.bpffs(), frontend, proto)
        }
    }
}
