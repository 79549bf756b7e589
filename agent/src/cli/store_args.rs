//! `--store` and the etcd TLS options, shared by the commands that read the store directly.
use std::path::PathBuf;

use anyhow::Context as _;
use viking::store::{AnyStore, EtcdOptions, StoreSpec, DEFAULT_STORE};

#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// `etcd://HOST:PORT[,HOST:PORT..]` (`etcds://` for TLS), or `embedded:DIR`.
    #[arg(long, env = "VIKING_STORE", default_value = DEFAULT_STORE)]
    pub store: StoreSpec,
    /// CA certificate (PEM) to verify etcd with; turns on TLS.
    #[arg(long, env = "VIKING_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's mutual TLS.
    #[arg(long, env = "VIKING_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd's mutual TLS.
    #[arg(long, env = "VIKING_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl StoreArgs {
    pub fn etcd(&self) -> EtcdOptions {
        EtcdOptions {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            timeout: None,
        }
    }

    /// The store, for a command that only reads: an embedded store the agent has open is
    /// opened read-only next to it.
    pub async fn open_for_reading(&self) -> anyhow::Result<AnyStore> {
        AnyStore::open_for_reading(&self.store, &self.etcd())
            .await
            .with_context(|| format!("opening the store {}", self.store))
    }
}
