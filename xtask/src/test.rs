//! `cargo xtask test`: setup, lint, build, then every test. As root nothing is skipped: the
//! privileged tests create their own namespaces, cgroups and bpffs directories.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::bail;

use crate::{
    setup,
    util::{exec, Step},
};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    if !nix_root() {
        bail!("cargo xtask test needs root: the integration tests load eBPF programs and create network namespaces");
    }
    setup::run()?;
    {
        let _s = Step::new(1, 5, "lint (rustfmt, clippy -D warnings; the eBPF crate on its own)");
        exec(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
        exec(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        // NB: the eBPF crate only compiles for the BPF target, with nightly and build-std.
        exec(
            Command::new("cargo")
                .args(["+nightly", "clippy", "-p", "viking-ebpf", "--target", "bpfel-unknown-none"])
                .args([
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                    "target/ebpf-lint",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env(
                    "CARGO_ENCODED_RUSTFLAGS",
                    format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                ),
        )?;
    }
    {
        let _s = Step::new(2, 5, "build (eBPF object through aya-build, agent, probe)");
        exec(Command::new("cargo").args(["build", "--bins"]))?;
    }
    let (mut passed, mut failed, mut names) = {
        let _s = Step::new(3, 5, "tests (unit + privileged integration)");
        cargo_test(extra)?
    };
    if extra.is_empty() {
        // Each target counts as one test: 0 crashes in its bounded run.
        let _s = Step::new(4, 5, "fuzzing (each target, bounded; fuzz/corpus/)");
        match crate::fuzz::build().and_then(|()| crate::fuzz::targets()) {
            Ok(targets) => {
                for t in targets {
                    if crate::fuzz::run_one(&t, crate::fuzz::TEST_SECONDS, false)? {
                        passed += 1;
                    } else {
                        println!("fuzz target {t} FAILED: the input is in fuzz/artifacts/{t}/");
                        names.push(format!("fuzz {t}"));
                        failed += 1;
                    }
                }
            }
            Err(e) => {
                println!("fuzzing FAILED: {e:#}");
                names.push("fuzz build".into());
                failed += 1;
            }
        }
    }
    if extra.is_empty() {
        // The README's first command, checked: the demo fails on any check it makes.
        let _s = Step::new(5, 5, "the demo (cargo xtask demo, on the debug build)");
        let opts = crate::demo::Options {
            build: false,
            viking: crate::util::root().join("target/debug/viking"),
        };
        match crate::demo::run(&opts) {
            Ok(()) => passed += 1,
            Err(e) => {
                println!("demo FAILED: {e:#}");
                names.push("demo".into());
                failed += 1;
            }
        }
    }
    // One closing line for the whole run (cargo prints one per test binary).
    println!("tests: {passed} passed, {failed} failed");
    for name in &names {
        println!("  FAILED: {name}");
    }
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, adds up every "test result:" line and keeps the
/// names of the tests that failed (for the closing lines).
fn cargo_test(extra: &[String]) -> anyhow::Result<(u64, u64, Vec<String>)> {
    let mut child = Command::new("cargo")
        .args(["test", "--no-fail-fast"])
        .args(extra)
        .current_dir(crate::util::root())
        .stdout(Stdio::piped())
        .spawn()?;
    let (mut passed, mut failed, mut names) = (0, 0, Vec::new());
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(name) =
                line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED"))
            {
                names.push(name.to_string());
            }
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, " passed");
                failed += count(rest, " failed");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("cargo test failed: {status}");
    }
    Ok((passed, failed, names))
}

/// The number before `what` in "ok. 5 passed; 0 failed; ...".
fn count(line: &str, what: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn nix_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
