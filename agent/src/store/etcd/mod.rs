//! The distributed store: etcd v3 through etcd-client.
//!
//! Every call has a deadline (`EtcdOptions::timeout`) and is retried on another member while
//! errors are transient (a member died, no leader yet), so a cluster that loses a minority
//! keeps serving. Watches reconnect from the last revision they delivered and resync after a
//! compaction.
mod health;
mod watch;

use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare as ECompare, CompareOp, ConnectOptions,
    DeleteOptions, GetOptions, Identity, LeaseGrantOptions, PutOptions, ResignOptions, TlsOptions,
    Txn as ETxn, TxnOp, TxnOpResponse,
};
use tokio::sync::mpsc;

use super::{
    error::etcd_transient,
    keys,
    types::prefix_end,
    watch::{Backoff, WATCH_BUFFER},
    Compare, KeyValue, LeaderKey, LeaseId, Listing, Op, Result, Revision, Store, StoreError, Txn,
    TxnResult, Watch,
};

/// How to reach etcd beyond its endpoints.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// CA certificate (PEM) to verify the members with; turns on TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How long one operation may take, retries included (default 10 s). One attempt gets a
    /// quarter of it (at least 1 s): a request stuck on a member that just died (or on the
    /// raft leader it forwarded to) is abandoned and sent again, likely to another member.
    pub timeout: Option<Duration>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `connect` waits for the cluster's first answer.
const PROBE: Duration = Duration::from_secs(3);

/// A handle on an etcd cluster; clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Arc<Client>,
    endpoints: Arc<str>,
    timeout: Duration,
    health: Arc<health::Health>,
    /// Whether calls get answers (`/v1/health`).
    signal: crate::store::HealthSignal,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({})", self.endpoints)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: lossy(kv.key()),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    }
}

impl EtcdStore {
    fn limit(&self, op: &'static str, key: &str, limit: super::limits::Limit) -> StoreError {
        StoreError::Limit { store: self.describe(), op, key: key.to_owned(), limit }
    }

    /// Connects to the cluster and checks that it answers: an unreachable cluster is an error
    /// naming the endpoints, not a hang.
    pub async fn connect(endpoints: &[String], options: &EtcdOptions) -> Result<Self> {
        let tls = options.ca.is_some() || options.cert.is_some();
        if options.ca.is_none() && endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(StoreError::BadSpec {
                spec: endpoints.join(","),
                reason: "TLS needs --etcd-ca (the CA that signed the members' certificates)".into(),
            });
        }
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if tls && e.starts_with("http://") {
                    e.replacen("http://", "https://", 1)
                } else {
                    e.clone()
                }
            })
            .collect();
        let shown: Arc<str> = endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",")
            .into();
        let unreachable = |reason: String| {
            // NB: with TLS the transport's own words ("connection closed", "UnknownIssuer")
            // do not say which file is wrong; the hint does.
            let reason = match tls.then(|| tls_hint(options, &reason)).flatten() {
                Some(hint) => format!("{hint} ({reason})"),
                None => reason,
            };
            StoreError::Unreachable { endpoints: shown.to_string(), reason }
        };
        let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // NB: a member cut off from the others refuses rather than serving stale watches.
            .with_require_leader(true);
        if tls {
            connect = connect.with_tls(tls_options(options).map_err(unreachable)?);
        }
        let client = tokio::time::timeout(timeout, Client::connect(&endpoints, Some(connect)))
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let health =
            Arc::new(health::Health::start(client.clone(), endpoints.clone(), shown.to_string()));
        let store = Self {
            client: Arc::new(client),
            endpoints: shown.clone(),
            timeout,
            health,
            signal: crate::store::HealthSignal::new(),
        };
        // NB: the first answer is waited for briefly: an unreachable cluster (every member
        // refusing) is reported in seconds, not after the full operation timeout.
        let probe = Self { timeout: timeout.min(PROBE), ..store.clone() };
        match probe.revision().await {
            Ok(_) => Ok(store),
            Err(e) if e.is_transient() => Err(unreachable(match e {
                StoreError::Etcd { source, .. } => source.to_string(),
                StoreError::Timeout { after, .. } => format!("no answer within {after:?}"),
                other => other.to_string(),
            })),
            Err(e) => Err(e),
        }
    }

    /// Whether calls get answers: unhealthy after a call failed for want of the cluster (past
    /// its retries), healthy again with the next answer.
    pub fn health(&self) -> crate::store::HealthSignal {
        self.signal.clone()
    }

    /// The underlying client, for what the trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `f` until it succeeds, fails for good, or the deadline passes; transient errors
    /// (a member died, no leader yet) are retried, which the balanced channel sends elsewhere.
    async fn call<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        // NB: retrying is safe for every call made here: puts and deletes are idempotent, and
        // a transaction whose first attempt did commit fails its compares the second time,
        // which the allocators answer by reading what is there.
        let deadline = Instant::now() + self.timeout;
        let attempt = (self.timeout / 4).max(Duration::from_secs(1));
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result =
                tokio::time::timeout(attempt.min(left), f(Client::clone(&self.client))).await;
            let retry = Instant::now() + pause < deadline;
            match result {
                Ok(Ok(v)) => {
                    self.signal.ok();
                    return Ok(v);
                }
                Ok(Err(e)) if etcd_transient(&e) && retry => {
                    if e.to_string().contains("connect") {
                        self.health.suspect();
                    }
                    tracing::debug!(endpoints = %self.endpoints, op, key, error = %e, "retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(_) if retry => {
                    tracing::debug!(endpoints = %self.endpoints, op, key, "no answer; retrying");
                }
                Ok(Err(source)) => {
                    if let Some(limit) = refused_for_size(&source) {
                        return Err(self.limit(op, key, limit));
                    }
                    let e = StoreError::Etcd {
                        endpoints: self.endpoints.to_string(),
                        op,
                        key: key.into(),
                        source,
                    };
                    if e.is_transient() {
                        self.signal.failing(&e);
                    }
                    return Err(e);
                }
                Err(_) => {
                    let e = StoreError::Timeout {
                        endpoints: self.endpoints.to_string(),
                        op,
                        key: key.into(),
                        after: self.timeout,
                    };
                    self.signal.failing(&e);
                    return Err(e);
                }
            }
        }
    }

    fn lease_not_found(&self, lease: LeaseId) -> StoreError {
        StoreError::LeaseNotFound { store: self.describe(), lease: lease.0 }
    }
}

fn tls_options(options: &EtcdOptions) -> std::result::Result<TlsOptions, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let mut tls = TlsOptions::new();
    if let Some(ca) = &options.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => return Err("a client certificate needs its key and the other way round".into()),
    }
    Ok(tls)
}

/// What to do about a TLS connection that failed, from the transport's error. A member that
/// refuses the client's certificate (or its absence) closes the connection or sends an alert,
/// whichever the client sees first.
fn tls_hint(options: &EtcdOptions, reason: &str) -> Option<String> {
    let shown = |p: &Option<PathBuf>| p.as_ref().map_or("none".into(), |p| p.display().to_string());
    if reason.contains("UnknownIssuer") {
        Some(format!(
            "TLS: the members' certificate is not signed by the CA given (--etcd-ca {})",
            shown(&options.ca)
        ))
    } else if reason.contains("invalid peer certificate") {
        Some(format!(
            "TLS: the members' certificate was refused (wrong name or expired?) with --etcd-ca {}",
            shown(&options.ca)
        ))
    } else if [
        "connection closed",
        "broken pipe",
        "connection reset",
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
    ]
    .iter()
    .any(|s| reason.contains(s))
    {
        Some(match &options.cert {
            None => "TLS: the members refused the connection; they likely require a client \
                     certificate: give --etcd-cert and --etcd-key"
                .into(),
            Some(cert) => format!(
                "TLS: the members refused the connection; they likely do not trust the client \
                 certificate --etcd-cert {} (it must be signed by a CA they trust)",
                cert.display()
            ),
        })
    } else {
        None
    }
}

/// etcd's own refusal of a request over its limits (ours are checked before sending, so this
/// is a server configured below the defaults).
fn refused_for_size(e: &etcd_client::Error) -> Option<super::limits::Limit> {
    let message = e.to_string();
    ["too many operations in txn request", "request is too large", "larger than max"]
        .iter()
        .any(|m| message.contains(m))
        .then_some(super::limits::Limit::Server { message })
}

fn compare(c: &Compare) -> ECompare {
    match c {
        Compare::Absent(key) => ECompare::create_revision(key.as_str(), CompareOp::Equal, 0),
        Compare::ModRevision(key, rev) => {
            ECompare::mod_revision(key.as_str(), CompareOp::Equal, *rev)
        }
        Compare::Value(key, value) => {
            ECompare::value(key.as_str(), CompareOp::Equal, value.clone())
        }
        Compare::PrefixUnchangedSince(prefix, rev) => {
            let c = ECompare::mod_revision(prefix.as_str(), CompareOp::Less, rev + 1);
            match prefix_end(prefix) {
                Some(end) => c.with_range(end),
                None => c.with_range(vec![0u8]),
            }
        }
    }
}

fn op(o: &Op) -> TxnOp {
    match o {
        Op::Put { key, value, lease } => TxnOp::put(
            key.as_str(),
            value.clone(),
            lease.map(|l| PutOptions::new().with_lease(l.0)),
        ),
        Op::Delete { key } => TxnOp::delete(key.as_str(), None),
        Op::DeletePrefix { prefix } => {
            TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
        }
        Op::Get { key } => TxnOp::get(key.as_str(), None),
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {}", self.endpoints)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp =
            self.call("get", key, |c| async move { c.kv_client().get(key, None).await }).await?;
        Ok(resp.kvs().first().map(convert))
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let resp = self
            .call("list", prefix, |c| async move {
                c.kv_client()
                    .max_decoding_message_size(256 << 20)
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        Ok(Listing {
            kvs: resp.kvs().iter().map(convert).collect(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        super::limits::check_put(key, &value).map_err(|limit| self.limit("put", key, limit))?;
        let resp = self
            .call("put", key, |c| {
                let value = value.clone();
                async move {
                    c.kv_client()
                        .put(key, value, lease.map(|l| PutOptions::new().with_lease(l.0)))
                        .await
                }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let resp = self
            .call("delete", key, |c| async move { c.kv_client().delete(key, None).await })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let resp = self
            .call("delete", prefix, |c| async move {
                c.kv_client().delete(prefix, Some(DeleteOptions::new().with_prefix())).await
            })
            .await?;
        Ok(resp.deleted().max(0) as u64)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let first_key = txn.first_key().to_owned();
        super::limits::check_txn(&txn).map_err(|limit| self.limit("txn", &first_key, limit))?;
        let request = ETxn::new()
            .when(txn.when.iter().map(compare).collect::<Vec<_>>())
            .and_then(txn.then.iter().map(op).collect::<Vec<_>>())
            .or_else(txn.otherwise.iter().map(op).collect::<Vec<_>>());
        let resp = self
            .call("txn", &first_key, |c| {
                let request = request.clone();
                async move { c.kv_client().txn(request).await }
            })
            .await?;
        let gets = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map(convert)),
                _ => None,
            })
            .collect();
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
            gets,
        })
    }

    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<Watch> {
        let start = match from {
            Some(r) => r,
            None => self.revision().await? + 1,
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task =
            tokio::spawn(watch::watch_task(self.clone(), prefix.to_string(), start, tx, ready_tx));
        // NB: without this, a compaction right after `watch()` returned could beat the
        // server-side registration and turn a live watch into a resync. If the server is slow
        // to answer, the watch still works: it starts from `start` whenever it connects.
        let _ = tokio::time::timeout(self.timeout, ready).await;
        Ok(Watch::new(rx, task))
    }

    async fn revision(&self) -> Result<Revision> {
        let resp = self
            .call("revision", keys::ROOT, |c| async move {
                c.kv_client().get(keys::ROOT, Some(GetOptions::new().with_count_only())).await
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let key = format!("revision {revision}");
        let r = self
            .call("compact", &key, |c| async move {
                c.kv_client()
                    .compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            // NB: compacting to a revision already compacted is not an error for us.
            Err(StoreError::Etcd { source: etcd_client::Error::GRpcStatus(s), .. })
                if s.message().contains("compacted") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let resp = self
            .call("grant lease", "", |c| async move {
                c.lease_client().grant(secs, None::<LeaseGrantOptions>).await
            })
            .await?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let key = format!("lease {lease}");
        let r = self
            .call("keep lease alive", &key, |c| async move {
                let (mut keeper, mut stream) = c.lease_client().keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |m| m.ttl()))
            })
            .await;
        match r {
            Ok(ttl) if ttl > 0 => Ok(Duration::from_secs(ttl as u64)),
            Ok(_) => Err(self.lease_not_found(lease)),
            Err(StoreError::Etcd {
                source: etcd_client::Error::LeaseKeepAliveError(m), ..
            }) if m.contains("not found") => Err(self.lease_not_found(lease)),
            Err(e) => Err(e),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let key = format!("lease {lease}");
        let r = self
            .call("revoke lease", &key, |c| async move { c.lease_client().revoke(lease.0).await })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(StoreError::Etcd { source: etcd_client::Error::GRpcStatus(s), .. })
                if s.message().contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn campaign(&self, election: &str, value: Vec<u8>, lease: LeaseId) -> Result<LeaderKey> {
        // NB: no deadline: campaigning waits, server side, until this candidate leads. A
        // broken connection is retried; etcd finds the candidate's key again by its lease.
        let mut backoff = Backoff::new();
        loop {
            let mut client = self.client.election_client();
            match client.campaign(election, value.clone(), lease.0).await {
                Ok(resp) => {
                    let Some(l) = resp.leader() else {
                        return Err(StoreError::Etcd {
                            endpoints: self.endpoints.to_string(),
                            op: "campaign",
                            key: election.into(),
                            source: etcd_client::Error::ElectError(
                                "no leader key in answer".into(),
                            ),
                        });
                    };
                    return Ok(LeaderKey {
                        name: lossy(l.name()),
                        key: lossy(l.key()),
                        revision: l.rev(),
                        lease: LeaseId(l.lease()),
                    });
                }
                Err(e) if e.to_string().contains("lease not found") => {
                    return Err(self.lease_not_found(lease))
                }
                Err(e) if etcd_transient(&e) => {
                    tracing::debug!(endpoints = %self.endpoints, election, error = %e, "campaign retry");
                    backoff.wait().await;
                }
                Err(source) => {
                    return Err(StoreError::Etcd {
                        endpoints: self.endpoints.to_string(),
                        op: "campaign",
                        key: election.into(),
                        source,
                    })
                }
            }
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<KeyValue>> {
        let r = self
            .call("leader", election, |c| async move { c.election_client().leader(election).await })
            .await;
        match r {
            Ok(resp) => Ok(resp.kv().map(convert)),
            Err(StoreError::Etcd { source: etcd_client::Error::GRpcStatus(s), .. })
                if s.message().contains("no leader") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn resign(&self, key: &LeaderKey) -> Result<()> {
        let leader = etcd_client::LeaderKey::new()
            .with_name(key.name.as_str())
            .with_key(key.key.as_str())
            .with_rev(key.revision)
            .with_lease(key.lease.0);
        self.call("resign", &key.key, |c| {
            let leader = leader.clone();
            async move {
                c.election_client().resign(Some(ResignOptions::new().with_leader(leader))).await
            }
        })
        .await?;
        Ok(())
    }
}
