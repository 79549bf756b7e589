//! etcd over mutual TLS (issue #4): a real etcd on 127.0.0.1 with `--client-cert-auth`
//! (`Etcd::start_tls`, certificates made by the `openssl` CLI). The store, the `viking` CLI and
//! a real agent work through it with the right CA and client certificate; without a client
//! certificate, or trusting a CA that did not sign the server, connecting fails with an error
//! that says what to fix.
#![allow(clippy::unwrap_used)]
use std::{process::Command, time::Duration};

use viking::{
    cluster::{membership, HostInfo},
    store::{keys, EtcdOptions, EtcdStore, Store, WatchEvent},
};
use viking_tests::{agent::AgentProc, etcd::Etcd, viking_bin};

fn viking(args: &[String]) -> (bool, String, String) {
    let out = Command::new(viking_bin()).args(args).env("RUST_LOG", "warn").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connecting with `options` must fail; the error, for the assertions.
async fn refused(etcd: &Etcd, options: EtcdOptions) -> String {
    let options = EtcdOptions { timeout: Some(Duration::from_secs(3)), ..options };
    match EtcdStore::connect(&etcd.endpoints(), &options).await {
        Ok(s) => panic!("connected with {options:?}: revision {:?}", s.revision().await),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_put_get_list_watch() {
    let etcd = Etcd::start_tls().await;
    assert!(etcd.endpoints()[0].starts_with("https://127.0.0.1:"));
    let s = EtcdStore::connect(&etcd.endpoints(), &etcd.options()).await.unwrap();

    let rev = s.put("/viking/tls-test/a", b"one".to_vec(), None).await.unwrap();
    let kv = s.get("/viking/tls-test/a").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"one"[..], rev));
    s.put("/viking/tls-test/b", b"two".to_vec(), None).await.unwrap();
    let listing = s.list("/viking/tls-test/").await.unwrap();
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/viking/tls-test/a", "/viking/tls-test/b"]);

    let mut w = s.watch("/viking/tls-test/", Some(listing.revision + 1)).await.unwrap();
    s.put("/viking/tls-test/c", b"three".to_vec(), None).await.unwrap();
    assert!(s.delete("/viking/tls-test/a").await.unwrap());
    match w.next_within(Duration::from_secs(5)).await {
        Some(WatchEvent::Put(kv)) => {
            assert_eq!((kv.key.as_str(), &kv.value[..]), ("/viking/tls-test/c", &b"three"[..]))
        }
        other => panic!("expected the put of c, got {other:?}"),
    }
    match w.next_within(Duration::from_secs(5)).await {
        Some(WatchEvent::Delete { key, .. }) => assert_eq!(key, "/viking/tls-test/a"),
        other => panic!("expected the delete of a, got {other:?}"),
    }

    // The same through `etcds://` parsed like `--store` does.
    let spec: viking::store::StoreSpec = etcd.spec().parse().unwrap();
    let any = viking::store::AnyStore::open(&spec, &etcd.options()).await.unwrap();
    assert!(any.get("/viking/tls-test/b").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_client_cert_or_with_wrong_ca() {
    let etcd = Etcd::start_tls().await;
    let pki = etcd.pki().unwrap();

    // No client certificate: the server refuses the handshake; the error says to give one.
    let no_cert =
        refused(&etcd, EtcdOptions { ca: Some(pki.ca.clone()), ..Default::default() }).await;
    assert!(
        no_cert.contains(&etcd.members[0].endpoint())
            && no_cert.contains("require a client certificate")
            && no_cert.contains("--etcd-cert"),
        "{no_cert}"
    );

    // A CA that did not sign the server: the client refuses the server, naming the CA file.
    let wrong_ca =
        refused(&etcd, EtcdOptions { ca: Some(pki.other_ca.clone()), ..pki.client_options() })
            .await;
    assert!(
        wrong_ca.contains("not signed by the CA")
            && wrong_ca.contains(&format!("--etcd-ca {}", pki.other_ca.display())),
        "{wrong_ca}"
    );

    // A client certificate the server's CA did not sign: the error names it.
    let stranger = refused(
        &etcd,
        EtcdOptions {
            cert: Some(pki.other_cert.clone()),
            key: Some(pki.other_key.clone()),
            ..pki.client_options()
        },
    )
    .await;
    assert!(
        stranger.contains("do not trust the client certificate")
            && stranger.contains(&pki.other_cert.display().to_string()),
        "{stranger}"
    );

    // https without a CA at all: refused before connecting, saying what is missing.
    let no_ca = refused(&etcd, EtcdOptions::default()).await;
    assert!(no_ca.contains("TLS needs --etcd-ca"), "{no_ca}");

    // The right files still work next to all that.
    let s = EtcdStore::connect(&etcd.endpoints(), &etcd.options()).await.unwrap();
    s.revision().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_agent_through_tls() {
    viking_tests::require_root();
    let etcd = Etcd::start_tls().await;
    let pki = etcd.pki().unwrap();
    let s = etcd.store().await;
    let host = HostInfo::new("tls-edge", "127.0.0.9".parse().unwrap());
    let _member = membership::join(&s, host, Duration::from_secs(10)).await.unwrap();

    // `viking hosts` reads through TLS with the CA and client certificate.
    let mut args = vec!["hosts".to_string(), "--store".into(), etcd.spec()];
    args.extend(pki.cli_args());
    let (ok, out, err) = viking(&args);
    assert!(ok, "viking {}: {err}", args.join(" "));
    assert!(out.contains("tls-edge") && out.contains("127.0.0.9"), "{out}");

    // Without the client certificate it fails, saying so.
    let args = ["hosts", "--store", &etcd.spec(), "--etcd-ca", &pki.ca.display().to_string()]
        .map(String::from);
    let (ok, _, err) = viking(&args);
    assert!(!ok, "viking {} succeeded", args.join(" "));
    assert!(err.contains("require a client certificate"), "{err}");

    // A real agent on etcds:// registers itself.
    let agent = AgentProc::start_with(Some(&etcd.spec()), &pki.cli_args()).await;
    let key = keys::host(&agent.node);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.get(&key).await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "{key} never appeared:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out, err) = viking(
        &[&["hosts".to_string(), "--store".into(), etcd.spec()][..], &pki.cli_args()].concat(),
    );
    assert!(ok && out.contains(&agent.node), "{out}{err}");
}
