//! The CLI: output to a closed pipe ends quietly (no panic), and a token it cannot send says
//! so instead of blaming the agent.
use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
};

use viking_tests::{agent::AgentProc, viking_bin};

#[tokio::test]
async fn output_to_a_closed_pipe_ends_quietly() {
    let agent = AgentProc::embedded().await;
    for args in [vec!["services", "--json"], vec!["services"]] {
        let mut child = Command::new(viking_bin())
            .args(&args)
            .arg("--bpffs")
            .arg(&agent.bpf.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes (`viking services | head -0`).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

#[tokio::test]
async fn a_token_a_header_cannot_carry_is_named_as_such() {
    let agent = AgentProc::embedded().await;
    let dir = viking_tests::etcd::TempDir::new("vk-cli-token-");
    let bad = dir.path.join("token");
    std::fs::write(&bad, "abc\ndef\n").unwrap();
    let link = dir.path.join("link");
    std::os::unix::fs::symlink(agent.token_file(), &link).unwrap();
    let run = |token_file: &std::path::Path, env: Option<&str>| {
        let mut cmd = Command::new(viking_bin());
        cmd.args(["stacks", "--server", &agent.api, "--token-file"]).arg(token_file);
        cmd.env_remove("VIKING_TOKEN");
        if let Some(t) = env {
            cmd.env("VIKING_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = run(&bad, None);
    assert!(!ok);
    assert!(err.contains("not usable") && err.contains(&bad.display().to_string()), "{err}");
    assert!(!err.contains("running"), "the agent is up; the token is the problem: {err}");
    let (ok, err) = run(&bad, Some("abc def"));
    assert!(!ok);
    assert!(err.contains("VIKING_TOKEN") && !err.contains("running"), "{err}");
    let (ok, err) = run(&link, None);
    assert!(!ok);
    assert!(err.contains("symbolic link"), "{err}");
    let (ok, err) = run(&agent.token_file(), None);
    assert!(ok, "{err}");
}
