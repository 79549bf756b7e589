//! Which etcd members take requests. etcd-client balances over every endpoint it was given
//! and keeps sending requests to a member that is down (each fails with "connection
//! refused"); this task takes such a member out of the balance and puts it back once it
//! accepts connections again. The last member is never taken out.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::Client;
use tokio::{net::TcpStream, sync::Notify, task::JoinHandle};

/// How often members are probed when nothing seems wrong.
const PERIOD: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Owned by the store's handles; the task stops when the last one goes.
pub(super) struct Health {
    wake: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl Health {
    pub(super) fn start(client: Client, endpoints: Vec<String>, shown: String) -> Self {
        let wake = Arc::new(Notify::new());
        // NB: one endpoint has nothing to fail over to.
        let task = (endpoints.len() > 1)
            .then(|| tokio::spawn(run(client, endpoints, shown, wake.clone())));
        Self { wake, task }
    }

    /// A request failed to connect somewhere: look now rather than at the next period.
    pub(super) fn suspect(&self) {
        self.wake.notify_one();
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// `host:port` of an endpoint URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

async fn alive(url: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(authority(url))).await,
        Ok(Ok(_))
    )
}

async fn run(client: Client, endpoints: Vec<String>, shown: String, wake: Arc<Notify>) {
    let mut balanced: BTreeMap<String, bool> = endpoints.into_iter().map(|e| (e, true)).collect();
    loop {
        let _ = tokio::time::timeout(PERIOD, wake.notified()).await;
        let mut probes = Vec::with_capacity(balanced.len());
        for url in balanced.keys() {
            probes.push((url.clone(), alive(url).await));
        }
        for (url, up) in probes {
            let inside = balanced.get(&url).copied().unwrap_or(false);
            let others = balanced.iter().filter(|(u, b)| **b && **u != url).count();
            if !up && inside && others > 0 {
                match client.remove_endpoint(url.as_str()).await {
                    Ok(()) => {
                        tracing::warn!(etcd = %shown, member = %url, "member unreachable: not sending it requests");
                        balanced.insert(url, false);
                    }
                    Err(e) => {
                        tracing::warn!(member = %url, error = %e, "could not take a member out")
                    }
                }
            } else if up && !inside {
                match client.add_endpoint(url.as_str()).await {
                    Ok(()) => {
                        tracing::info!(etcd = %shown, member = %url, "member reachable again");
                        balanced.insert(url, true);
                    }
                    Err(e) => {
                        tracing::warn!(member = %url, error = %e, "could not put a member back")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn authorities() {
        assert_eq!(super::authority("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(super::authority("https://etcd-1:2379/"), "etcd-1:2379");
        assert_eq!(super::authority("10.0.0.1:2379"), "10.0.0.1:2379");
    }
}
