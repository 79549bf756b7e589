//! The API token: an empty one in the store is replaced by a fresh one, only the exact token
//! passes (HTTP/1.1 and h2c), and the token file is replaced, never written through a link or
//! left to another owner.
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use reqwest::{header::AUTHORIZATION, Client, StatusCode, Version};
use viking::store::Store as _;
use viking_tests::{agent::AgentProc, etcd::Etcd};

/// Status and JSON body of `GET /v1/stacks` with these Authorization headers.
async fn stacks(
    http: &Client,
    api: &str,
    auth: &[&str],
) -> (StatusCode, Version, serde_json::Value) {
    let mut req = http.get(format!("http://{api}/v1/stacks"));
    for a in auth {
        req = req.header(AUTHORIZATION, *a);
    }
    let res = req.send().await.expect("an answer");
    let (status, version) = (res.status(), res.version());
    let body = res.json().await.unwrap_or(serde_json::Value::Null);
    (status, version, body)
}

#[tokio::test]
async fn an_empty_token_is_replaced_and_only_the_exact_token_passes() {
    let etcd = Etcd::start().await;
    let store = etcd.store().await;
    store.put("/viking/api/token", Vec::new(), None).await.unwrap();

    // The token file's path is a link to a file the agent must not touch.
    let scratch = viking_tests::etcd::TempDir::new("vk-token-");
    let victim = scratch.path.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let mut agent = AgentProc::start_with_setup(Some(&etcd.spec()), &[], |a| {
        std::os::unix::fs::symlink(&victim, a.token_file()).unwrap();
    })
    .await;

    let stored = store.get("/viking/api/token").await.unwrap().expect("a token");
    let token = String::from_utf8(stored.value).unwrap();
    assert_eq!(token.len(), 64, "a fresh 256-bit token replaced the empty one: {token:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "written through the link");
    let meta = std::fs::symlink_metadata(agent.token_file()).unwrap();
    assert!(meta.file_type().is_file(), "the link was replaced by a file");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    assert_eq!(std::fs::read_to_string(agent.token_file()).unwrap(), token);

    let h1 = Client::new();
    let h2 = Client::builder().http2_prior_knowledge().build().unwrap();
    let wrong_last = format!("{}{}", &token[..63], if token.ends_with('0') { '1' } else { '0' });
    let refused: Vec<Vec<String>> = vec![
        vec![],
        vec!["Bearer".into()],
        vec!["Bearer ".into()],
        vec!["bearer    ".into()],
        vec!["Bearer x".into()],
        vec![format!("Bearer {}", &token[..63])],
        vec![format!("Bearer {token}x")],
        vec![format!("Bearer {wrong_last}")],
        vec![format!("Basic {token}")],
        vec![format!("Bearer{token}")],
        vec![token.clone()],
        vec![format!("Bearer {token}"), "Bearer x".into()],
    ];
    for (http, version) in [(&h1, Version::HTTP_11), (&h2, Version::HTTP_2)] {
        for auth in &refused {
            let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
            let (status, v, body) = stacks(http, &agent.api, &auth).await;
            assert_eq!(v, version);
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{version:?} {auth:?} passed");
            assert!(body["error"].is_string(), "{version:?} {auth:?}: JSON error body, got {body}");
        }
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let auth = format!("{scheme} {token}");
            let (status, v, body) = stacks(http, &agent.api, &[&auth]).await;
            assert_eq!((status, v), (StatusCode::OK, version), "{auth}: {body}");
        }
    }

    // Another owner's readable file at the path: replaced by the agent's own at restart.
    agent.kill();
    std::fs::remove_file(agent.token_file()).unwrap();
    std::fs::write(agent.token_file(), "stale").unwrap();
    std::fs::set_permissions(agent.token_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    nix::unistd::chown(
        &agent.token_file(),
        Some(nix::unistd::Uid::from_raw(4242)),
        Some(nix::unistd::Gid::from_raw(4242)),
    )
    .unwrap();
    agent.restart().await;
    let meta = std::fs::symlink_metadata(agent.token_file()).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 0, 0o600));
    assert_eq!(std::fs::read_to_string(agent.token_file()).unwrap(), token, "the same token");
}

#[tokio::test]
async fn errors_are_json_also_axums_own() {
    let agent = AgentProc::embedded().await;
    let token = std::fs::read_to_string(agent.token_file()).unwrap();
    let http = Client::new();
    let auth = format!("Bearer {token}");
    let cases = [
        (http.post(format!("http://{}/v1/deploy", agent.api)).body("{not json"), "bad JSON"),
        (
            http.post(format!("http://{}/v1/deploy", agent.api))
                .header("content-type", "application/json")
                .body("{not json"),
            "bad JSON with its type",
        ),
        (http.get(format!("http://{}/v1/nothing-here", agent.api)), "unknown route"),
        (http.delete(format!("http://{}/v1/ps", agent.api)), "wrong method"),
        (http.get(format!("http://{}/v1/ps?stack=a&stack=b", agent.api)), "bad query"),
    ];
    for (req, what) in cases {
        let res = req.header(AUTHORIZATION, &auth).send().await.unwrap();
        let status = res.status();
        assert!(status.is_client_error(), "{what}: {status}");
        let ct = res.headers().get("content-type").cloned();
        let body: serde_json::Value = res.json().await.unwrap_or_else(|e| {
            panic!("{what}: {status} with content-type {ct:?} is not JSON: {e}")
        });
        let message = body["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: {body}");
    }
}
