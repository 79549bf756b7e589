//! `viking agent`: the per-host daemon. It attaches the datapath, sets up the overlay, joins
//! the cluster through the store, campaigns for leadership, and serves the API.
use std::{net::IpAddr, path::Path, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use viking::{
    api::{self, state::ApiState, LeaderInfo},
    cluster::Addresses,
    cluster::{self, membership, HostInfo, DEFAULT_PORT_RANGE},
    control::{self, placement::Placer, reconciler::Reconciler},
    datapath::{Algo, Datapath, DatapathConfig},
    deploy::Deployer,
    discovery, metrics,
    overlay::{self, Paths},
    runtime::{docker::DockerRuntime, exec::ExecRuntime, AnyRuntime, RuntimeConfig, RuntimeKind},
    store::{self, EtcdOptions, LeaderKey, Store, StoreSpec},
};

pub struct AgentConfig {
    pub node: String,
    pub datapath: DatapathConfig,
    pub store: StoreSpec,
    /// etcd's TLS files.
    pub etcd: EtcdOptions,
    pub api: std::net::SocketAddr,
    /// The address other hosts reach this one on (`None`: derived, see `host_address`).
    pub address: Option<IpAddr>,
    pub tags: Vec<String>,
    pub token_file: PathBuf,
    /// The address links' env vars point containers at.
    pub ambassador: IpAddr,
    pub runtime: RuntimeKind,
    /// This node's data directory (instance state, logs, volumes).
    pub data_dir: PathBuf,
    /// This node's run directory (network namespace mounts).
    pub run_dir: PathBuf,
    pub docker_socket: PathBuf,
    /// Stop this node's instances when the agent stops.
    pub drain: bool,
    /// The host's network namespace, when the agent runs outside it.
    pub host_netns: Option<PathBuf>,
    /// The VPC policy folder (`--vpc-rules`); `None`: no filter.
    pub vpc_rules: Option<PathBuf>,
    pub vpc_attach: viking::vpc::AttachMode,
    /// The API's TLS certificate and key (`--api-cert`, `--api-key`).
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// The CA other agents' API certificates are verified with (forwarding to the leader).
    pub api_ca: Option<PathBuf>,
    /// Serve the API without TLS on a non-loopback address.
    pub api_insecure: bool,
    pub overlay: OverlayArgs,
    /// The DNS responder (`--dns-*`).
    pub names: viking::names::NamesArgs,
}

/// `--overlay`, `--overlay-port`, `--overlay-vni`, `--overlay-pool`.
pub struct OverlayArgs {
    pub mode: overlay::Mode,
    pub port: u16,
    pub vni: u32,
    pub pool: ipnetwork::Ipv4Network,
}

/// The address other hosts reach this one on: `--address` (or the API's, when specific), else
/// the one the host's default route leaves from. Without either, a single host on its embedded
/// store uses 127.0.0.1; on a shared store that would tell every other host to dial its own
/// loopback, so the agent refuses to start.
async fn host_address(cfg: &AgentConfig) -> anyhow::Result<IpAddr> {
    if let Some(a) = cfg.address {
        return Ok(a);
    }
    let derived = overlay::setup::default_address(cfg.host_netns.as_deref())
        .await
        .context("looking for the default route to derive --address from")?;
    if let Some(a) = derived {
        tracing::info!(address = %a, "--address: the address the default route leaves from");
        return Ok(IpAddr::V4(a));
    }
    match cfg.store {
        StoreSpec::Embedded(_) => Ok(IpAddr::from([127, 0, 0, 1])),
        StoreSpec::Etcd(_) => anyhow::bail!(
            "no --address given and this host has no default route to derive it from: pass \
             --address ADDR, the address the other hosts reach this one on (their overlay \
             tunnels, registrations and forwarded API writes go there)"
        ),
    }
}

/// The API address the leader advertises: `--api` as given, or with the host's address in
/// place of an unspecified one (`0.0.0.0:PORT` would send followers' writes to themselves).
fn advertised_api(api: std::net::SocketAddr, address: IpAddr) -> std::net::SocketAddr {
    if api.ip().is_unspecified() {
        std::net::SocketAddr::new(address, api.port())
    } else {
        api
    }
}

fn open_runtime<S: Store>(
    cfg: &AgentConfig,
    store: &S,
    address: IpAddr,
    mtu: u32,
    names: Option<&viking::names::Names>,
) -> anyhow::Result<AnyRuntime> {
    let rc = RuntimeConfig {
        node: cfg.node.clone(),
        data_dir: cfg.data_dir.clone(),
        cgroup: cfg.datapath.cgroup.clone(),
        host_address: address,
        host_netns: cfg.host_netns.clone(),
        mtu: Some(mtu),
    };
    Ok(match cfg.runtime {
        RuntimeKind::Exec => {
            let exec = ExecRuntime::new(rc, &cfg.run_dir).context("preparing the exec runtime")?;
            AnyRuntime::Exec(match names {
                Some(n) => exec.with_dns(n.listen.ip(), &n.domain),
                None => exec,
            })
        }
        RuntimeKind::Docker => {
            let docker = DockerRuntime::connect(rc, &cfg.docker_socket)
                .with_context(|| {
                    format!("connecting to docker at {}", cfg.docker_socket.display())
                })?
                .with_contexts(Arc::new(store.clone()));
            AnyRuntime::Docker(match names {
                Some(n) => docker.with_dns(n.listen.ip(), &n.domain),
                None => docker,
            })
        }
    })
}

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    // Bad TLS files or a cleartext API on the network are refused before anything starts.
    let tls = match &cfg.api_tls {
        Some((cert, key)) => Some(api::tls::server_config(cert, key)?),
        None => {
            api::tls::check_cleartext(cfg.api, cfg.api_insecure)?;
            None
        }
    };
    let forward = api::tls::client(cfg.api_ca.as_deref())?;
    let mut datapath = Datapath::start(&cfg.datapath)
        .with_context(|| format!("starting the datapath of node {}", cfg.node))?;
    datapath.spawn_log();
    if let Err(e) = metrics::global().datapath.attach(&cfg.datapath.bpffs) {
        tracing::error!(error = %e, "reading the pinned maps for /metrics and /v1/status");
    }
    let store = store::open(&cfg.store, &cfg.etcd)
        .await
        .with_context(|| format!("opening the store {}", cfg.store))?;
    let store_health = store.health();
    let store = metrics::Measured::new(store);
    let address = host_address(&cfg).await?;
    let prepared = overlay::prepare(
        &store,
        overlay::Config {
            node: cfg.node.clone(),
            mode: cfg.overlay.mode,
            vni: cfg.overlay.vni,
            port: cfg.overlay.port,
            address,
            pool: cfg.overlay.pool,
            host_netns: cfg.host_netns.clone(),
        },
    )
    .await?;
    tracing::info!(
        mode = ?cfg.overlay.mode,
        underlay = %prepared.underlay.0,
        mtu = prepared.mtu,
        vtep = ?prepared.vtep,
        "overlay ready"
    );
    // NB: an API bound to every address is reached on this host's address.
    let advertised = advertised_api(cfg.api, address);
    let mut info = HostInfo {
        tags: cfg.tags.clone(),
        api: Some(advertised.to_string()),
        runtime: Some(match cfg.runtime {
            RuntimeKind::Docker => "docker".into(),
            RuntimeKind::Exec => "exec".into(),
        }),
        load: membership::loadavg().unwrap_or(0),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..HostInfo::new(cfg.node.clone(), address)
    };
    if let Some(vtep) = &prepared.vtep {
        info.set_vtep(vtep);
    }
    let member = cluster::membership::join(&store, info.clone(), membership::DEFAULT_TTL)
        .await
        .with_context(|| format!("joining the cluster as {}", cfg.node))?;
    let token = api::token::ensure(&store, &cfg.token_file).await?;
    let me = LeaderInfo { node: cfg.node.clone(), api: advertised.to_string(), tls: tls.is_some() };
    let (leading, leader_key) = elect(store.clone(), me);

    let (stop_tx, stop) = watch::channel(false);
    let vpc = start_vpc(&cfg, &store, address, stop.clone()).await;
    // NB: a responder that cannot start stops nothing else; instances then keep the host's
    // resolver settings.
    let names =
        match viking::names::start(&cfg.names, store.clone(), cfg.host_netns.clone(), stop.clone())
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "names: no DNS responder on this host");
                viking::metrics::global().names.failed(&e);
                None
            }
        };

    let runtime = open_runtime(&cfg, &store, address, prepared.mtu, names.as_ref())?;
    let deployer = Arc::new(Deployer::new(store.clone(), DEFAULT_PORT_RANGE, cfg.ambassador));
    let state = Arc::new(ApiState {
        deployer: deployer.clone(),
        store: store.clone(),
        token,
        node: cfg.node.clone(),
        leading: leading.clone(),
        http: forward,
        local: Arc::new(api::state::Local {
            address,
            api: advertised.to_string(),
            tls: tls.is_some(),
            started: std::time::Instant::now(),
        }),
        store_health,
        runner: Some(Arc::new(runtime.clone())),
    });
    let listener = std::net::TcpListener::bind(cfg.api)
        .with_context(|| format!("binding the API to {}", cfg.api))?;
    let app = api::server::router(state, viking::vpc::api::router(vpc));
    let server = tokio::spawn(api::serve::serve(listener, app, tls));
    tracing::info!(
        node = %cfg.node,
        api = %cfg.api,
        tls = cfg.api_tls.is_some(),
        store = %store.describe(),
        "agent running"
    );

    let (containers_tx, containers) = watch::channel(discovery::embassy::Containers::new());
    let placer = Placer::new(
        store.clone(),
        deployer,
        Addresses::new(store.clone(), cfg.overlay.pool),
        leader_key,
    );
    let (overlay, reach) = overlay::run::Overlay::new(store.clone(), prepared);
    let overlay = tokio::spawn(overlay.run(stop.clone(), cfg.drain));
    let (programmed_tx, programmed) = watch::channel(0);
    tokio::spawn(membership::report_load(store.clone(), info, member.lease_watch(), stop.clone()));
    let placement = tokio::spawn(control::placement::run(placer, leading.clone(), stop.clone()));
    let mut reconciler = Reconciler::new(
        store.clone(),
        runtime.clone(),
        cfg.node.clone(),
        member.lease_watch(),
        containers_tx,
    )
    .keep_completed_in(cfg.data_dir.join("completed.json"));
    reconciler.paths = Some(Paths { reach, datapath: programmed });
    let reconcile = tokio::spawn(reconciler.run(stop.clone(), cfg.drain));
    let discovery = tokio::spawn(discovery::sync::run_reporting(
        store.clone(),
        datapath,
        cfg.ambassador,
        DEFAULT_PORT_RANGE,
        Algo::default(),
        containers,
        stop,
        programmed_tx,
    ));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    server.abort();
    let _ = stop_tx.send(true);
    let _ = placement.await;
    let _ = reconcile.await;
    let _ = overlay.await;
    match discovery.await {
        Ok(Ok(mut datapath)) => datapath.table.flush()?,
        Ok(Err(e)) => tracing::warn!(error = %e, "discovery stopped"),
        Err(e) => tracing::warn!(error = %e, "discovery task"),
    }
    if let Err(e) = member.leave().await {
        tracing::warn!(error = %e, "leaving the cluster");
    }
    tracing::info!(node = %cfg.node, "agent stopped; programs and services stay pinned");
    Ok(())
}

/// The VPC filter, when `--vpc-rules` is given; without it, an earlier agent's filter is taken
/// off the host.
async fn start_vpc<S: Store>(
    cfg: &AgentConfig,
    store: &S,
    address: IpAddr,
    stop: watch::Receiver<bool>,
) -> Option<viking::vpc::VpcHandle> {
    let state_dir = cfg.run_dir.join("vpc");
    let Some(rules_dir) = cfg.vpc_rules.clone() else {
        let bpffs = cfg.datapath.bpffs.clone();
        match viking::vpc::remove_if_present(bpffs, cfg.host_netns.clone(), state_dir).await {
            Ok(true) => tracing::info!("VPC filter removed: the agent runs without --vpc-rules"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "removing the VPC filter of an earlier agent"),
        }
        return None;
    };
    let settings = viking::vpc::VpcSettings {
        rules_dir,
        overlay_port: cfg.overlay.port,
        attach: cfg.vpc_attach,
        host_netns: cfg.host_netns.clone(),
        bpffs: cfg.datapath.bpffs.clone(),
        state_dir,
        tags: cfg.tags.clone(),
        address,
    };
    Some(viking::vpc::start(settings, store.clone(), stop).await)
}

/// Campaigns for leadership for as long as the agent runs; the receivers say whether this
/// node leads right now, and with which leader key (what its writes are fenced by).
fn elect<S: Store>(
    store: S,
    me: LeaderInfo,
) -> (watch::Receiver<bool>, watch::Receiver<Option<LeaderKey>>) {
    let (tx, rx) = watch::channel(false);
    let (key_tx, key_rx) = watch::channel(None);
    let value = serde_json::to_string(&me).unwrap_or_default();
    tokio::spawn(async move {
        loop {
            match cluster::campaign(&store, &value, cluster::leader::DEFAULT_TTL).await {
                Ok(leadership) => {
                    let _ = key_tx.send(Some(leadership.key().clone()));
                    let _ = tx.send(true);
                    metrics::global().control.leader(true);
                    leadership.lost().await;
                    let _ = tx.send(false);
                    let _ = key_tx.send(None);
                    metrics::global().control.leader(false);
                    tracing::warn!(node = %me.node, "no longer leading");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    (rx, key_rx)
}

pub fn cleanup(bpffs: &Path) -> anyhow::Result<()> {
    // NB: before the pins go: clsact filters of the VPC are found by name (TCX links go with
    // their pins).
    viking::vpc::attach::remove(&viking::vpc::attach::Dirs::new(bpffs))?;
    Datapath::remove(bpffs)?;
    tracing::info!(bpffs = %bpffs.display(), "datapath removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_api_address_is_advertised_as_the_host_s() {
        let host: IpAddr = "10.0.1.10".parse().unwrap();
        let adv = |api: &str| advertised_api(api.parse().unwrap(), host).to_string();
        assert_eq!(adv("0.0.0.0:7700"), "10.0.1.10:7700");
        assert_eq!(adv("[::]:7700"), "10.0.1.10:7700");
        assert_eq!(adv("127.0.0.1:7700"), "127.0.0.1:7700", "as given when it names an address");
        assert_eq!(adv("10.0.1.10:7701"), "10.0.1.10:7701");
    }
}
