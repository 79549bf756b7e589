//! `cargo xtask`: the project's own tasks. Every task that needs tools runs `setup` first.
mod bench;
mod build;
mod demo;
mod fuzz;
mod image;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks (apt packages, rust-src, bpf-linker, bpffs). Idempotent.
    Setup,
    /// Build the eBPF object (the same aya-build path as `cargo build`) and copy it to
    /// target/bpf/viking.bpf.o.
    BuildEbpf,
    /// Setup, lint, build, then every test (unit and privileged integration tests).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The main job: setup, build, and show Viking at work on this machine.
    Demo {
        /// Use the debug build as it is (`cargo xtask test` runs the demo this way, last).
        #[arg(long)]
        debug: bool,
    },
    /// Setup, build, then a benchmark (as root). `datapath`: Viking against direct
    /// connections, iptables DNAT and HAProxy, as ratios to direct (docs/benchmarks.md).
    Bench {
        /// Which benchmark: datapath, discovery (store change -> datapath latency), agent
        /// (memory and cold start with 10k services), overlay (instance to instance across
        /// routed hosts against the underlay), vpc (the host filter against no filter and
        /// nftables), dns (the DNS responder against dnsmasq).
        which: String,
        /// Also write the results as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<std::path::PathBuf>,
        /// Also draw the results as SVG charts into DIR (docs/bench beside docs/benchmarks.md).
        #[arg(long, value_name = "DIR")]
        svg: Option<std::path::PathBuf>,
        /// A shorter run: fewer services, shorter iperf3 runs.
        #[arg(long)]
        quick: bool,
    },
    /// Build the fuzz targets (nightly, cargo-fuzz) and run each for a bounded time from its
    /// corpus in fuzz/corpus/ (docs/operations.md).
    Fuzz {
        /// Only these targets (default: every file of fuzz/src/bin/).
        targets: Vec<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Keep new inputs in the repository's corpus (to commit).
        #[arg(long)]
        keep: bool,
    },
    /// Build the local images into the running dockerd, nothing pulled (`docker import`):
    /// viking/agent:<version> (the agent, release build) and viking/busybox:latest.
    Image {
        /// The dockerd to import into (e.g. unix:///run/docker.sock); default: docker's own.
        #[arg(long)]
        host: Option<String>,
        /// Put the debug build in the agent image as it is (no release build).
        #[arg(long)]
        debug: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => {
            setup::run()?;
            let path = build::ebpf_object()?;
            println!("eBPF object: {}", path.display());
            Ok(())
        }
        Command::Test { args } => test::run(&args),
        Command::Demo { debug } => demo::run(&if debug {
            demo::Options { build: false, viking: util::root().join("target/debug/viking") }
        } else {
            demo::Options::default()
        }),
        Command::Bench { which, json, svg, quick } => bench::run(&which, json, svg, quick),
        Command::Fuzz { targets, time, keep } => {
            setup::run()?;
            fuzz::run(&fuzz::Options { targets, seconds: time, keep })
        }
        Command::Image { host, debug } => {
            setup::run()?;
            let profile = if debug { "debug" } else { "release" };
            if !debug {
                let _s = util::Step::new(1, 2, "build (release: the agent with its eBPF object)");
                util::exec(std::process::Command::new("cargo").args([
                    "build",
                    "--release",
                    "-p",
                    "viking",
                    "--bin",
                    "viking",
                ]))?;
            }
            let _s = util::Step::new(2, 2, "images (docker import)");
            image::run(host.as_deref(), &util::root().join("target").join(profile).join("viking"))
        }
    }
}
