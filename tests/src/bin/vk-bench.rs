//! Viking's benchmarks (docs/benchmarks.md). Run through `cargo xtask bench datapath`, as root.
//!
//!   vk-bench datapath [--json FILE] [--svg DIR] [--quick]   the whole benchmark (bench::)
//!   vk-bench discovery [--json FILE] [--svg DIR] [--quick]  store change -> datapath
//!   vk-bench agent [--json FILE] [--quick]      a real agent: memory, cold start (bench::agent)
//!   vk-bench overlay [--json FILE] [--quick]    overlay vs underlay (bench::overlay)
//!   vk-bench plot FILE.json DIR                  draw a saved run's charts (SVG) again
//!   vk-bench vpc [--json FILE] [--quick]        the VPC filter against none and nftables
//!   vk-bench dns [--json FILE] [--quick]        the DNS responder against dnsmasq
//!   vk-bench synburst SRC DST PORT COUNT         raw TCP SYNs (bench::vpc's outsider)
//!   vk-bench cps ADDR SECS THREADS               connection loop; prints one JSON line
//!   vk-bench latency ADDR SAMPLES                connect() timings; prints one JSON line
//!   vk-bench failover ADDR SECS THREADS TIMEOUT_MS   connects while a backend dies
//!   vk-bench rr ADDR SAMPLES                     request/response round trips; one JSON line
//!
//! `cps`, `latency` and `failover` are what the benchmark runs as children inside the client
//! namespace and the datapath's cgroup.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context as _};
use viking_tests::bench::{self, client};

const USAGE: &str = "usage: vk-bench datapath [--json FILE] [--svg DIR] [--quick]
       vk-bench discovery [--json FILE] [--svg DIR] [--quick]
       vk-bench agent [--json FILE] [--quick]
       vk-bench overlay [--json FILE] [--quick]
       vk-bench plot FILE.json DIR
       vk-bench vpc [--json FILE] [--quick]
       vk-bench dns [--json FILE] [--quick]
       vk-bench synburst SRC DST PORT COUNT
       vk-bench cps ADDR SECS THREADS
       vk-bench latency ADDR SAMPLES
       vk-bench failover ADDR SECS THREADS TIMEOUT_MS
       vk-bench rr ADDR SAMPLES";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vk-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let arg = |i: usize, what: &str| -> anyhow::Result<&str> {
        args.get(i).map(String::as_str).with_context(|| format!("missing {what}\n{USAGE}"))
    };
    match args.first().map(String::as_str) {
        Some(which @ ("datapath" | "discovery" | "agent" | "overlay" | "vpc" | "dns")) => {
            let mut opts = bench::Options::default();
            let mut rest = args[1..].iter();
            while let Some(a) = rest.next() {
                match a.as_str() {
                    "--quick" => opts.quick = true,
                    "--json" => {
                        opts.json = Some(PathBuf::from(rest.next().context("--json needs a FILE")?))
                    }
                    "--svg" => {
                        opts.svg = Some(PathBuf::from(rest.next().context("--svg needs a DIR")?))
                    }
                    other => bail!("unknown argument {other:?}\n{USAGE}"),
                }
            }
            match which {
                "datapath" => bench::run(&opts),
                "agent" => bench::agent::run(&opts),
                "overlay" => bench::overlay::run(&opts),
                "vpc" => bench::vpc::run(&opts),
                "dns" => bench::dns::run(&opts),
                _ => bench::discovery::run(&opts),
            }
        }
        Some("plot") => {
            let file = PathBuf::from(arg(1, "FILE.json")?);
            let dir = PathBuf::from(arg(2, "DIR")?);
            for f in bench::plot::from_json(&file, &dir)? {
                println!("SVG: {}", f.display());
            }
            Ok(())
        }
        Some("failover") => {
            let addr: SocketAddr = arg(1, "ADDR")?.parse().context("ADDR")?;
            let secs: f64 = arg(2, "SECS")?.parse().context("SECS")?;
            let threads: usize = arg(3, "THREADS")?.parse().context("THREADS")?;
            let ms: u64 = arg(4, "TIMEOUT_MS")?.parse().context("TIMEOUT_MS")?;
            let timeout = std::time::Duration::from_millis(ms);
            print_json(&bench::failover::client(addr, secs, threads, timeout))
        }
        Some("synburst") => {
            let src = arg(1, "SRC")?.parse().context("SRC")?;
            let dst = arg(2, "DST")?.parse().context("DST")?;
            let port: u16 = arg(3, "PORT")?.parse().context("PORT")?;
            let count: u64 = arg(4, "COUNT")?.parse().context("COUNT")?;
            print_json(&bench::vpc::syn_burst(src, dst, port, count)?)
        }
        Some("cps") => {
            let addr: SocketAddr = arg(1, "ADDR")?.parse().context("ADDR")?;
            let secs: f64 = arg(2, "SECS")?.parse().context("SECS")?;
            let threads: usize = arg(3, "THREADS")?.parse().context("THREADS")?;
            print_json(&client::cps(addr, secs, threads))
        }
        Some("latency") => {
            let addr = match arg(1, "ADDR")?.parse().context("ADDR")? {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => bail!("latency: IPv4 addresses only"),
            };
            let samples: usize = arg(2, "SAMPLES")?.parse().context("SAMPLES")?;
            print_json(&client::latency(addr, samples, samples / 20))
        }
        Some("rr") => {
            let addr: SocketAddr = arg(1, "ADDR")?.parse().context("ADDR")?;
            let samples: usize = arg(2, "SAMPLES")?.parse().context("SAMPLES")?;
            print_json(&bench::overlay::rr(addr, samples)?)
        }
        _ => bail!("{USAGE}"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v).context("serialising")?);
    Ok(())
}
