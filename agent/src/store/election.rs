//! etcd's election protocol (concurrency.Election) on the `Store` primitives, for stores
//! without a server-side election API (the embedded one). Each candidate puts
//! `<election>/<lease hex>` under its lease; the live key with the lowest create revision leads;
//! the others wait for the keys before theirs to go.
use super::{
    Compare, KeyValue, LeaderKey, LeaseId, Op, Result, Store, StoreError, Txn, WatchEvent,
};

fn candidates(election: &str) -> String {
    format!("{election}/")
}

pub(crate) async fn campaign<S: Store>(
    store: &S,
    election: &str,
    value: Vec<u8>,
    lease: LeaseId,
) -> Result<LeaderKey> {
    let key = format!("{}{lease}", candidates(election));
    let put = Op::Put { key: key.clone(), value: value.clone(), lease: Some(lease) };
    let r = store
        .txn(
            Txn::when([Compare::Absent(key.clone())])
                .then([put.clone()])
                .otherwise([Op::get(&key)]),
        )
        .await?;
    let revision = if r.succeeded {
        r.revision
    } else {
        // NB: campaigning again with the same lease resumes the candidacy (etcd does this too).
        let existing = r.gets.into_iter().next().flatten();
        let rev = existing.as_ref().map_or(r.revision, |kv| kv.create_revision);
        if existing.is_some_and(|kv| kv.value != value) {
            store.txn(Txn::when([]).then([put])).await?;
        }
        rev
    };
    let lost = || StoreError::LeaseNotFound { store: store.describe(), lease: lease.0 };
    loop {
        let listing = store.list(&candidates(election)).await?;
        if !listing.kvs.iter().any(|kv| kv.key == key) {
            return Err(lost());
        }
        if !listing.kvs.iter().any(|kv| kv.create_revision < revision) {
            return Ok(LeaderKey { name: election.to_string(), key, revision, lease });
        }
        // Wait for a change under the election (a deletion, or a resync) and look again.
        let mut watch = store.watch(&candidates(election), Some(listing.revision + 1)).await?;
        while let Some(e) = watch.next().await {
            if matches!(e, WatchEvent::Delete { .. } | WatchEvent::Resync { .. }) {
                break;
            }
        }
    }
}

pub(crate) async fn leader<S: Store>(store: &S, election: &str) -> Result<Option<KeyValue>> {
    let listing = store.list(&candidates(election)).await?;
    Ok(listing.kvs.into_iter().min_by_key(|kv| kv.create_revision))
}

pub(crate) async fn resign<S: Store>(store: &S, key: &LeaderKey) -> Result<()> {
    store.delete(&key.key).await.map(|_| ())
}
