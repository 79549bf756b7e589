//! Test 2: the member set follows membership. A host that joins is let in within 2 s of its
//! membership record; one that leaves is shut out once its lease lapses.
use std::time::{Duration, Instant};

use viking::{cluster::membership, store::EtcdStore};
use viking_tests::{
    backend::Backend,
    vpc::{reach, Reach, VpcNet},
};

use super::CLUSTER_ONLY;

async fn listed(store: &EtcdStore, node: &str) -> bool {
    membership::hosts(store).await.expect("hosts").iter().any(|h| h.info.name == node)
}

#[tokio::test]
async fn joining_and_leaving_hosts_are_let_in_and_shut_out() {
    let mut net = VpcNet::new(3, 0).await;
    net.start(0, CLUSTER_ONLY, &[]).await;
    net.start(1, CLUSTER_ONLY, &[]).await;
    let _server = Backend::tcp(&net.hosts[1].ns, "b", net.addr(1, 9000));
    let store = EtcdStore::connect(&net.etcd.endpoints(), &Default::default()).await.expect("etcd");
    let target = net.addr(1, 9000);

    // Host 2 is not a member yet: dropped.
    assert_eq!(reach(&net.hosts[2].ns, target), Reach::Silent);

    // It joins: from the moment its record is there, it is let in within 2 s.
    net.write_policy(2, "policy.yml", CLUSTER_ONLY);
    let watch = {
        // Notes when a third host's record appears (the agent writes it while it starts).
        let store = store.clone();
        let known: Vec<String> = (0..2).map(|i| net.agent(i).node.clone()).collect();
        tokio::spawn(async move {
            loop {
                let hosts = membership::hosts(&store).await.expect("hosts");
                if let Some(h) = hosts.iter().find(|h| !known.contains(&h.info.name)) {
                    return (h.info.name.clone(), Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    net.launch(2, &[]).await;
    let (node, joined) = watch.await.expect("host 2 registered");
    assert_eq!(node, net.agent(2).node);
    let mut let_in = None;
    while joined.elapsed() < Duration::from_secs(5) {
        if reach(&net.hosts[2].ns, target) == Reach::Connected {
            let_in = Some(joined.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = let_in.expect("host 2 let in after joining");
    assert!(took <= Duration::from_secs(2), "let in {took:?} after its record appeared");
    let s = net.status(1).await;
    assert!(s.members.contains(&net.hosts[2].ip.into()), "{s:#?}");

    // It dies (SIGKILL, no goodbye): still a member until its lease lapses...
    net.hosts[2].agent.as_mut().expect("agent").kill();
    assert_eq!(
        reach(&net.hosts[2].ns, target),
        Reach::Connected,
        "a member until the lease lapses"
    );
    // ...then shut out within 2 s of the record going.
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed(&store, &node).await {
        assert!(Instant::now() < deadline, "host 2's lease never lapsed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = Instant::now();
    let mut shut = None;
    while gone.elapsed() < Duration::from_secs(5) {
        if reach(&net.hosts[2].ns, target) == Reach::Silent {
            shut = Some(gone.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = shut.expect("host 2 shut out after its lease lapsed");
    assert!(took <= Duration::from_secs(2), "shut out {took:?} after its record went");
    let s = net.status(1).await;
    assert!(!s.members.contains(&net.hosts[2].ip.into()), "{s:#?}");
    assert_eq!(s.members.len(), 2);
}
