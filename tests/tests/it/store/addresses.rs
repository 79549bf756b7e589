//! The subnet and address allocator ("DHCP") under concurrency, against a real etcd and the
//! embedded store.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    time::Instant,
};

use ipnetwork::Ipv4Network;
use viking::{
    cluster::{addresses::capacity, Addresses, ClusterError},
    store::{keys, Store},
};
use viking_tests::{etcd::Backend, store_tests};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 200;
const STACKS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn pool() -> Ipv4Network {
    viking::cluster::DEFAULT_POOL.parse().unwrap()
}

/// 8 clients x 200 containers over 4 stacks at once: no address twice, each inside its stack's
/// subnet, subnets disjoint and inside the pool; the same container asking again gets its
/// address back.
async fn concurrent_addresses<B: Backend>(b: &B) {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let alloc = Addresses::new(b.client().await, pool());
        tasks.push(tokio::spawn(async move {
            let mut subnets = HashMap::new();
            let mut got = Vec::new();
            for i in 0..PER_CLIENT {
                let stack = STACKS[(i + c) % STACKS.len()];
                if !subnets.contains_key(stack) {
                    // Every client asks for the subnet; they must all get the same one.
                    let net = alloc
                        .subnet(stack, (CLIENTS * PER_CLIENT / STACKS.len()) as u64)
                        .await
                        .unwrap();
                    subnets.insert(stack, net);
                }
                let owner = format!("c{c}/{i}");
                got.push((stack, owner.clone(), alloc.address(stack, &owner).await.unwrap()));
            }
            (subnets, got)
        }));
    }
    let mut subnets: HashMap<&str, Ipv4Network> = HashMap::new();
    let mut seen: HashSet<Ipv4Addr> = HashSet::new();
    let mut owners = HashMap::new();
    for t in tasks {
        let (nets, got) = t.await.unwrap();
        for (stack, net) in nets {
            assert_eq!(*subnets.entry(stack).or_insert(net), net, "stack {stack} got two subnets");
        }
        for (stack, owner, ip) in got {
            assert!(seen.insert(ip), "{ip} given twice (again to {owner})");
            owners.insert(owner, (stack, ip));
        }
    }
    eprintln!("{}: {} addresses by {CLIENTS} clients in {:?}", b.name(), seen.len(), t.elapsed());
    assert_eq!(seen.len(), CLIENTS * PER_CLIENT);
    for (owner, (stack, ip)) in &owners {
        let net = subnets[stack];
        assert!(net.contains(*ip), "{owner}: {ip} outside {stack}'s {net}");
        assert!(
            *ip != net.network()
                && *ip != net.broadcast()
                && *ip != viking::cluster::addresses::gateway(net)
        );
    }
    // 400 containers per stack: a /23 each, all inside the pool and disjoint.
    let nets: Vec<Ipv4Network> = subnets.values().copied().collect();
    for (i, a) in nets.iter().enumerate() {
        assert_eq!(a.prefix(), 23, "{a}");
        assert!(pool().contains(a.network()) && pool().contains(a.broadcast()));
        for b2 in &nets[i + 1..] {
            assert!(!a.contains(b2.network()) && !b2.contains(a.network()), "{a} overlaps {b2}");
        }
    }
    // Asking again gives the same address.
    let alloc = Addresses::new(b.client().await, pool());
    for (owner, (stack, ip)) in owners.iter().take(50) {
        assert_eq!(alloc.address(stack, owner).await.unwrap(), *ip);
    }
    let table = alloc.list().await.unwrap();
    assert_eq!(table.ips.len(), CLIENTS * PER_CLIENT);
    assert!(table.subnets.iter().all(|s| s.used == CLIENTS * PER_CLIENT / STACKS.len()));
}

/// Released addresses and subnets come back only after release; sizes follow the instance
/// count; a full subnet is a clear error; a removed stack frees everything.
async fn release_and_reuse<B: Backend>(b: &B) {
    let alloc = Addresses::new(b.client().await, "10.99.0.0/22".parse().unwrap());
    assert!(matches!(alloc.address("web", "web/0").await, Err(ClusterError::NoSubnet { .. })));
    let small = alloc.subnet("small", 2).await.unwrap();
    assert_eq!(small.prefix(), 24);
    let big = alloc.subnet("big", 300).await.unwrap();
    assert_eq!(big.prefix(), 23);
    assert_eq!(capacity(big), 509);
    let third = alloc.subnet("third", 1).await.unwrap();
    // The pool (a /22) is now full.
    let e = alloc.subnet("fourth", 1).await.unwrap_err();
    assert!(matches!(e, ClusterError::PoolExhausted { .. }), "{e}");
    // Fill "small" to the brim: 253 containers, then a clear error.
    for i in 0..253 {
        alloc.address("small", &format!("small/{i}")).await.unwrap();
    }
    let e = alloc.address("small", "small/253").await.unwrap_err();
    assert!(
        matches!(e, ClusterError::SubnetFull { .. }) && e.to_string().contains(&small.to_string()),
        "{e}"
    );
    // Release one: it is the only one free, so it is what the next container gets.
    let freed = alloc.release_owner("small", "small/17").await.unwrap().unwrap();
    assert_eq!(alloc.address("small", "small/253").await.unwrap(), freed);
    // Removing a stack frees its subnet for another stack.
    alloc.release_stack("third").await.unwrap();
    assert_eq!(alloc.subnet("fourth", 1).await.unwrap(), third);
    // A subnet too small for a new instance count is replaced while empty, refused otherwise.
    let e = alloc.subnet("small", 600).await.unwrap_err();
    assert!(matches!(e, ClusterError::SubnetTooSmall { .. }), "{e}");
    let store = b.client().await;
    assert!(store.get(&keys::subnet("fourth")).await.unwrap().is_some());
}

store_tests!(concurrent_addresses, release_and_reuse);
