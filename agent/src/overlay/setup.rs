//! What the overlay settles at agent start, before the host joins: which address the host is
//! reached on, which link and MTU that is, that the instance pool collides with no route of the
//! host, and the VXLAN device whose VTEP goes into the membership record.
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;

use super::{Config, Mode, OverlayError, DEVICE, VXLAN_OVERHEAD};
use crate::{
    cluster::{membership::Vtep, Addresses},
    netlink::{in_netns_or_here, routes::HostRoute, vxlan::Vxlan, Mac, NetlinkError, PROTO_VIKING},
    store::Store,
};

/// The overlay as it was set up: what the loop keeps, the VTEP for the membership record and
/// the MTU instance interfaces get.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub cfg: Config,
    /// The VXLAN device (vxlan mode on a routable address).
    pub device: Option<Vxlan>,
    pub vtep: Option<Vtep>,
    /// The host's own overlay address (vxlan mode).
    pub address: Option<Ipv4Addr>,
    /// The MTU of instance interfaces.
    pub mtu: u32,
    /// The underlay link's name and MTU.
    pub underlay: (String, u32),
}

/// The address the default route leaves from in the host's namespace (`--host-netns` or the
/// agent's own), if there is a default route.
pub async fn default_address(
    cfg_netns: Option<&std::path::Path>,
) -> Result<Option<Ipv4Addr>, NetlinkError> {
    in_netns_or_here(cfg_netns, |nl| async move { nl.default_route_source().await }).await
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The first route of the host (not Viking's, not a default route) whose destination overlaps
/// `pool`.
pub fn collision(pool: Ipv4Network, routes: &[HostRoute]) -> Option<&HostRoute> {
    routes.iter().find(|r| {
        r.prefix > 0
            && r.protocol != rtnetlink::packet_route::route::RouteProtocol::Other(PROTO_VIKING)
            && Ipv4Network::new(r.dest, r.prefix).is_ok_and(|net| overlaps(net, pool))
    })
}

/// Checks the host, takes its overlay address from the allocator (the same one on every start)
/// and brings up the VXLAN device (kept as it is when it is already right).
pub async fn prepare<S: Store>(store: &S, cfg: Config) -> Result<Prepared, OverlayError> {
    let IpAddr::V4(address) = cfg.address else {
        return Err(OverlayError::Setup(format!(
            "--address {} is IPv6; the overlay's underlay is IPv4",
            cfg.address
        )));
    };
    let (underlay, routes, names) =
        in_netns_or_here(cfg.host_netns.as_deref(), move |nl| async move {
            let addrs = nl.ipv4_addresses().await?;
            let held = addrs.iter().find(|(_, a, _)| *a == address).map(|(i, _, _)| *i);
            let underlay = match held {
                Some(i) => Some((i, nl.link_name_mtu(i).await?)),
                None => None,
            };
            let routes = nl.main_routes().await?;
            let mut names = Vec::new();
            for r in &routes {
                if let Some(i) = r.oif {
                    names.push((i, nl.link_name_mtu(i).await.map(|(n, _)| n).unwrap_or_default()));
                }
            }
            Ok::<_, NetlinkError>((underlay, routes, names))
        })
        .await?;
    if let Some(r) = collision(cfg.pool, &routes) {
        let dev = r.oif.and_then(|i| names.iter().find(|(n, _)| *n == i)).map(|(_, n)| n.as_str());
        let mut route = format!("{}/{}", r.dest, r.prefix);
        if let Some(g) = r.gateway {
            route.push_str(&format!(" via {g}"));
        }
        if let Some(d) = dev {
            route.push_str(&format!(" dev {d}"));
        }
        return Err(OverlayError::Setup(format!(
            "the instance address pool {} collides with this host's route {route}: instances \
             would shadow what that route reaches; pick a pool clear of it with --overlay-pool \
             (the same on every host)",
            cfg.pool
        )));
    }
    if address.is_loopback() {
        tracing::warn!(
            %address,
            "the host's address is loopback: no overlay device (a single host; other hosts could not reach this one)"
        );
        return Ok(Prepared {
            cfg,
            device: None,
            vtep: None,
            address: None,
            mtu: 1500 - VXLAN_OVERHEAD,
            underlay: ("lo".into(), 65536),
        });
    }
    let Some((index, (name, underlay_mtu))) = underlay else {
        return Err(OverlayError::Setup(format!(
            "--address {address} is not an address of this host{}: the overlay sends from it; \
             give --address an address one of its links holds",
            cfg.host_netns
                .as_ref()
                .map(|p| format!(" (network namespace {})", p.display()))
                .unwrap_or_default()
        )));
    };
    let mtu = match cfg.mode {
        Mode::Vxlan => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        Mode::HostGw => underlay_mtu,
    };
    let device = (cfg.mode == Mode::Vxlan).then(|| Vxlan {
        name: DEVICE.to_owned(),
        vni: cfg.vni,
        port: cfg.port,
        local: address,
        dev: index,
        mtu,
        mac: Mac::derived(&format!("{}/{}", cfg.node, cfg.vni)),
        learning: false,
        up: true,
    });
    let overlay_address = match cfg.mode {
        Mode::Vxlan => {
            let a = Addresses::new(store.clone(), cfg.pool);
            let taken = async {
                a.subnet(super::HOST_ADDRESSES, super::HOST_ADDRESSES_SIZE).await?;
                a.address(super::HOST_ADDRESSES, &cfg.node).await
            };
            Some(taken.await.map_err(|e| {
                OverlayError::Setup(format!(
                    "taking this host's overlay address from {}: {e}",
                    cfg.pool
                ))
            })?)
        }
        Mode::HostGw => None,
    };
    let vtep = device.as_ref().map(|d| Vtep {
        mac: d.mac.to_string(),
        vni: d.vni,
        port: d.port,
        address: overlay_address,
    });
    let want = device.clone();
    in_netns_or_here(cfg.host_netns.as_deref(), move |nl| async move {
        super::netns_sysctls()?;
        let want_state = super::desired::State { device: want, ..Default::default() };
        let (have, index) = super::kernel::dump(&nl).await?;
        // NB: only the device here; its entries are the loop's (the diff keeps what is right).
        let have_device = super::desired::State { device: have.device, ..Default::default() };
        let ops: Vec<_> = super::diff::diff(&want_state, &have_device)
            .into_iter()
            .filter(|op| {
                matches!(
                    op,
                    super::diff::Op::AddDevice(_)
                        | super::diff::Op::SetDevice(_)
                        | super::diff::Op::DelDevice
                )
            })
            .collect();
        super::kernel::apply(&nl, ops, index).await
    })
    .await
    .map_err(|e| {
        OverlayError::Setup(format!(
        "setting up the VXLAN device {DEVICE} (vni {}, udp port {}): {e}; another VXLAN device \
         on this host may hold that port and VNI: pick others with --overlay-port/--overlay-vni",
        cfg.vni, cfg.port
    ))
    })?;
    Ok(Prepared {
        cfg,
        device,
        vtep,
        address: overlay_address,
        mtu,
        underlay: (name, underlay_mtu),
    })
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteProtocol;

    use super::*;

    fn route(dest: &str, prefix: u8, protocol: RouteProtocol) -> HostRoute {
        HostRoute {
            dest: dest.parse().unwrap(),
            prefix,
            gateway: None,
            oif: Some(2),
            protocol,
            prefsrc: None,
        }
    }

    #[test]
    fn a_route_inside_or_around_the_pool_collides_the_default_route_does_not() {
        let pool: Ipv4Network = "10.32.0.0/12".parse().unwrap();
        let ok = [
            route("0.0.0.0", 0, RouteProtocol::Boot),
            route("10.99.1.0", 24, RouteProtocol::Kernel),
            route("10.48.0.0", 12, RouteProtocol::Kernel),
            route("10.32.0.7", 32, RouteProtocol::Other(PROTO_VIKING)),
        ];
        assert_eq!(collision(pool, &ok), None);
        for bad in [
            route("10.33.4.0", 24, RouteProtocol::Kernel),
            route("10.0.0.0", 8, RouteProtocol::Static),
        ] {
            assert_eq!(collision(pool, std::slice::from_ref(&bad)), Some(&bad));
        }
    }
}
