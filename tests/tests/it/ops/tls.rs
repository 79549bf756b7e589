//! The API over TLS (rustls): two real agents on a real etcd serving HTTPS with a
//! certificate of the test's CA (`Pki`, made by the openssl CLI). The CLI with that CA works,
//! including a deploy sent to the follower and forwarded to the leader (over TLS: the leader
//! refuses plain HTTP); a wrong CA, plain HTTP, or a missing or wrong token is refused and
//! nothing is deployed. Without TLS the agent will not listen beyond loopback unless told
//! to, and bad certificate files are named.
//!
//! Traffic: loopback only.
#![allow(clippy::unwrap_used)]
use std::{path::Path, process::Command, process::Output};

use serde_json::Value;
use viking_tests::{agent::AgentProc, etcd::Etcd, etcd::Pki, viking_bin};

fn viking(args: &[&str], extra: &[&Path]) -> Output {
    Command::new(viking_bin()).args(args).args(extra).env("RUST_LOG", "warn").output().unwrap()
}

fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The stacks deployed, as the leader's API (verified with the right CA) lists them.
async fn stacks(agent: &AgentProc) -> Vec<String> {
    let list: Vec<Value> = agent.client().get("/v1/stacks").await.unwrap().unwrap();
    list.iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tls_verifies_the_server_forwards_to_the_leader_and_refuses_the_rest() {
    let etcd = Etcd::start().await;
    let pki = Pki::new();
    let tls: Vec<String> =
        [("--api-cert", &pki.server_cert), ("--api-key", &pki.server_key), ("--api-ca", &pki.ca)]
            .into_iter()
            .flat_map(|(f, p)| [f.to_string(), p.display().to_string()])
            .chain(["--runtime".to_string(), "exec".to_string()])
            .collect();
    let leader = AgentProc::start_tls(Some(&etcd.spec()), &tls, Some(pki.ca.clone())).await;
    for _ in 0..100 {
        if leader.is_leader().await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(leader.is_leader().await, "{}", leader.log());
    let follower = AgentProc::start_tls(Some(&etcd.spec()), &tls, Some(pki.ca.clone())).await;
    assert!(!follower.is_leader().await);

    // Plain HTTP to a TLS API gets nowhere (so forwarding below must have used TLS).
    assert!(reqwest::get(format!("http://{}/v1/health", leader.api)).await.is_err());
    // Probes answer over TLS without a token.
    let r = leader.http().get(leader.url("/v1/ready")).send().await.unwrap();
    assert!(r.status() == 200 || r.status() == 503);

    let token = follower.token_file();
    let ca = pki.ca.as_path();
    let server = follower.api.clone();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shared");
    let shared = shared.to_str().unwrap();

    // The right CA: a deploy through the follower is forwarded to the leader, over TLS.
    let ok = tokio::task::block_in_place(|| {
        let mut c = Command::new(viking_bin());
        c.args(["deploy", shared, "--name", "shared", "--server", &server, "--token-file"])
            .arg(&token)
            .arg("--api-ca")
            .arg(ca)
            .env("RUST_LOG", "warn");
        c.output().unwrap()
    });
    assert!(ok.status.success(), "deploy through the follower: {}\n{}", said(&ok), follower.log());
    assert_eq!(stacks(&leader).await, ["shared"]);
    let status = tokio::task::block_in_place(|| {
        viking(
            &[
                "status",
                "--json",
                "--server",
                &server,
                "--api-ca",
                ca.to_str().unwrap(),
                "--token-file",
            ],
            &[&token],
        )
    });
    let s: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
    assert_eq!(s["tls"], true, "{}", said(&status));
    assert_eq!(s["leader"]["node"], leader.node.as_str(), "{s}");
    assert_eq!(s["leader"]["tls"], true, "{s}");

    // A wrong CA: the server is not trusted; nothing is sent.
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web");
    let web = web.to_str().unwrap();
    let other = pki.other_ca.to_str().unwrap();
    let bad = tokio::task::block_in_place(|| {
        viking(
            &[
                "deploy",
                web,
                "--name",
                "web",
                "--server",
                &server,
                "--api-ca",
                other,
                "--token-file",
            ],
            &[&token],
        )
    });
    assert!(!bad.status.success());
    let msg = said(&bad);
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    // Plain HTTP to the TLS API.
    let http = format!("http://{server}");
    let bad = tokio::task::block_in_place(|| {
        viking(&["deploy", web, "--name", "web", "--server", &http, "--token-file"], &[&token])
    });
    assert!(!bad.status.success(), "{}", said(&bad));
    // The right CA, but no token, or a wrong one: 401.
    let http_client = leader.http();
    let body =
        serde_json::json!({"name": "web", "file": "viking.yml", "text": "x:\n  command: true\n"});
    let r = http_client.post(follower.url("/v1/deploy")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http_client
        .post(leader.url("/v1/deploy"))
        .bearer_auth("not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(stacks(&leader).await, ["shared"], "nothing refused was deployed");

    // Without TLS the API stays on loopback unless the operator says otherwise.
    let refused = viking(
        &[
            "agent",
            "--node",
            "tls-refused",
            "--api",
            "0.0.0.0:1",
            "--store",
            "embedded:/nonexistent/x",
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(said(&refused).contains("--api-insecure"), "{}", said(&refused));
    // A bad certificate file is named.
    let bogus = pki.dir.path.join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let refused = viking(
        &[
            "agent",
            "--node",
            "tls-refused",
            "--api",
            "127.0.0.1:1",
            "--api-cert",
            bogus.to_str().unwrap(),
            "--api-key",
            bogus.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(said(&refused).contains("bogus.pem"), "{}", said(&refused));
}
