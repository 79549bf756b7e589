//! The VIP allocator over both stores: deploys racing from two clients never give one address
//! to two jobs, a redeploy keeps a job's address, `rm` releases its stack's in the same commit
//! that removes its records.
use std::{collections::BTreeSet, sync::Arc};

use viking::{
    cluster::{vips::VipTable, DEFAULT_PORT_RANGE},
    deploy::Deployer,
    stack::Stack,
    store::Store,
};
use viking_tests::{etcd::Backend, store_tests};

fn stack(name: &str, text: &str) -> Stack {
    Stack::from_text(std::path::Path::new(&format!("{name}.yml")), text, name).expect("a stack")
}

async fn vips<S: Store>(store: &S) -> VipTable {
    VipTable::read(&store.list(viking::cluster::vips::PREFIX).await.unwrap().kvs).unwrap()
}

const FIG: &str = "pricing:\n  command: x\n  ports: [80]\nweb:\n  command: x\n  links: [pricing]\n";

async fn racing_deploys_get_distinct_stable_vips_and_rm_releases_them<B: Backend>(b: &B) {
    let (s1, s2) = (b.client().await, b.client().await);
    let amb = "127.0.0.1".parse().unwrap();
    let d1 = Arc::new(Deployer::new(s1.clone(), DEFAULT_PORT_RANGE, amb));
    let d2 = Arc::new(Deployer::new(s2.clone(), DEFAULT_PORT_RANGE, amb));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let d = if i % 2 == 0 { d1.clone() } else { d2.clone() };
        tasks.push(tokio::spawn(async move {
            d.deploy(&stack(&format!("s{i}"), FIG), &Default::default(), false).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let all = vips(&s1).await;
    assert_eq!(all.vips.len(), 16, "{} ({}): {:?}", b.name(), 16, all.vips.keys());
    let ips: BTreeSet<_> = all.vips.values().map(|v| v.ip).collect();
    assert_eq!(ips.len(), 16, "no address has two owners: {all:?}");
    assert!(all.vips.values().all(|v| v.ip.octets()[..2] == [10, 96]));

    // A redeploy keeps the address; rm releases only its stack's.
    let before = all.get("s3", "pricing").unwrap().ip;
    d1.deploy(&stack("s3", &FIG.replace("[80]", "[80, 8080]")), &Default::default(), false)
        .await
        .unwrap();
    let after = vips(&s2).await;
    assert_eq!(after.get("s3", "pricing").unwrap().ip, before);
    assert_eq!(after.get("s3", "pricing").unwrap().ports.len(), 2);
    d2.remove("s3", false).await.unwrap();
    let left = vips(&s1).await;
    assert_eq!(left.vips.len(), 14);
    assert!(left.get("s3", "pricing").is_none() && left.get("s3", "web").is_none());
    assert_eq!(left.get("s4", "web").unwrap().ip, all.get("s4", "web").unwrap().ip);
}

store_tests!(racing_deploys_get_distinct_stable_vips_and_rm_releases_them);
