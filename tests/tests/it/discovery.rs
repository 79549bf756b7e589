//! Discovery into the datapath: a link's ambassador port reaches whatever is registered for
//! its service (seed 002 format), and follows registrations as they come and go.
use std::{collections::BTreeSet, path::Path, time::Duration};

use viking::{
    api::DeployRequest,
    stack::plan::Plan,
    store::{EtcdOptions, EtcdStore, Store},
};
use viking_tests::{
    agent::AgentProc,
    backend::Backend,
    etcd::Etcd,
    guards::{veth, NetNs},
    probe_bin,
    topo::run_probe,
};

fn registration(ip: &str, port: u16, id: &str) -> Vec<u8> {
    serde_json::json!({
        "id": id, "host": "test", "ipaddress": ip, "host_port": port.to_string(),
        "port": "27017", "proto": "tcp", "tags": [], "name": id, "image": "mongo",
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_link_reaches_registered_instances_and_follows_changes() {
    let etcd = Etcd::start().await;
    let agent = AgentProc::start(Some(&etcd.spec())).await;
    let api = agent.client();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (name, file) in [("shared", "shared/viking.yml"), ("web", "web/viking.yml")] {
        let file = root.join(file);
        let text = std::fs::read_to_string(&file).unwrap();
        let req = DeployRequest {
            name: name.into(),
            file: file.display().to_string(),
            text,
            dry_run: false,
            contexts: Default::default(),
        };
        let _: Option<Plan> = api.post("/v1/deploy", &req).await.unwrap();
    }
    let env: std::collections::BTreeMap<String, String> =
        api.get("/v1/env/web/web").await.unwrap().unwrap();
    let ambassador = env["SHARED_MONGO_PORT_27017"].clone();

    let client = NetNs::new("vkdc");
    let server = NetNs::new("vkds");
    veth(&client, &["10.201.0.1/24"], &server, &["10.201.0.2/24", "10.201.0.3/24"]);
    let _m1 = Backend::tcp(&server, "mongo-1", "10.201.0.2:27017".parse().unwrap());
    let _m2 = Backend::tcp(&server, "mongo-2", "10.201.0.3:27017".parse().unwrap());
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();

    let ask = |n: usize| {
        let mut cmd = client.command(probe_bin(), Some(&agent.cgroup));
        cmd.args(["tcp", &ambassador, &n.to_string()]);
        run_probe(cmd)
            .iter()
            .map(|c| c.backend().unwrap_or("none").to_owned())
            .collect::<BTreeSet<_>>()
    };
    let until = |want: BTreeSet<String>| {
        let ask = &ask;
        async move {
            for _ in 0..100 {
                if ask(20) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(ask(20), want);
        }
    };

    // Nothing registered: the service exists with no backend, so connects are refused.
    until(BTreeSet::from(["none".to_owned()])).await;
    store
        .put(
            "/services/prod/shared_mongo/27017/27017/m1",
            registration("10.201.0.2", 27017, "m1"),
            None,
        )
        .await
        .unwrap();
    until(BTreeSet::from(["mongo-1".to_owned()])).await;
    store
        .put(
            "/services/prod/shared_mongo/27017/27018/m2",
            registration("10.201.0.3", 27017, "m2"),
            None,
        )
        .await
        .unwrap();
    until(BTreeSet::from(["mongo-1".to_owned(), "mongo-2".to_owned()])).await;
    store.delete("/services/prod/shared_mongo/27017/27017/m1").await.unwrap();
    until(BTreeSet::from(["mongo-2".to_owned()])).await;
}
