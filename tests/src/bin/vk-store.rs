//! A child process for the store tests, killed with SIGKILL mid-run:
//!
//! - `vk-store campaign STORE ID TTL_SECS`: campaigns for leadership forever; prints
//!   `LEADER ID` when it leads and `LOST ID` when it stops.
//! - `vk-store member STORE HOST TTL_SECS`: joins the cluster as HOST; prints `JOINED HOST`.
//! - `vk-store burst DIR WRITERS`: opens the embedded store in DIR and writes
//!   `/burst/<writer>/<n>` from WRITERS concurrent tasks, printing `ACK <key> <revision>` for
//!   each write the store has acknowledged.
//!
//! - `vk-store bulk STORE KEYS`: commits generation after generation of a bulk write of
//!   KEYS puts `/bulk/k/<i>` = `<generation>` (all or nothing, `store::bulk`), printing
//!   `COMMITTED <generation>` after each.
//!
//! STORE is a `--store` argument (etcd://.. or embedded:DIR).
use std::{io::Write as _, time::Duration};

use viking::{
    cluster::{self, membership, HostInfo},
    store::{bulk, AnyStore, EmbeddedStore, EtcdOptions, Op, Store, StoreSpec},
};

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn usage() -> ! {
    eprintln!(
        "usage: vk-store campaign STORE ID TTL | member STORE HOST TTL | burst DIR WRITERS \
         | bulk STORE KEYS"
    );
    std::process::exit(2)
}

async fn open(spec: &str) -> AnyStore {
    let spec: StoreSpec = spec.parse().unwrap_or_else(|e| panic!("{e}"));
    AnyStore::open(&spec, &EtcdOptions::default()).await.unwrap_or_else(|e| panic!("{e}"))
}

fn secs(s: &str) -> Duration {
    Duration::from_secs_f64(s.parse().unwrap_or_else(|_| usage()))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["campaign", spec, id, ttl] => {
            let store = open(spec).await;
            loop {
                match cluster::campaign(&store, id, secs(ttl)).await {
                    Ok(leadership) => {
                        say(format!("LEADER {id}"));
                        leadership.lost().await;
                        say(format!("LOST {id}"));
                    }
                    Err(e) => {
                        eprintln!("campaign: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        ["member", spec, host, ttl] => {
            let store = open(spec).await;
            let info = HostInfo {
                tags: vec!["test".into()],
                capacity: membership::Capacity { cpus: 2, memory_mb: 1024, instances: 10 },
                ..HostInfo::new(host.to_string(), "127.0.0.1".parse().unwrap_or_else(|_| usage()))
            };
            let _member =
                membership::join(&store, info, secs(ttl)).await.unwrap_or_else(|e| panic!("{e}"));
            say(format!("JOINED {host}"));
            std::future::pending::<()>().await;
        }
        ["burst", dir, writers] => {
            let store = EmbeddedStore::open(dir).await.unwrap_or_else(|e| panic!("{e}"));
            let writers: usize = writers.parse().unwrap_or_else(|_| usage());
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0u64.. {
                        let key = format!("/burst/{w}/{n}");
                        let rev = store
                            .put(&key, key.as_bytes().to_vec(), None)
                            .await
                            .unwrap_or_else(|e| panic!("{e}"));
                        say(format!("ACK {key} {rev}"));
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        ["bulk", spec, keys] => {
            let store = open(spec).await;
            let keys: usize = keys.parse().unwrap_or_else(|_| usage());
            for generation in 1u64.. {
                let ops = (0..keys)
                    .map(|i| Op::put(format!("/bulk/k/{i:05}"), generation.to_string()))
                    .collect();
                let done = bulk::commit(&store, Vec::new(), ops).await;
                assert!(done.unwrap_or_else(|e| panic!("{e}")), "no compare to fail");
                say(format!("COMMITTED {generation}"));
            }
        }
        _ => usage(),
    }
}
