//! `viking peers`: this host's overlay peers as the kernel holds them, next to what membership
//! says they should be (a peer left out says why).
use std::net::IpAddr;

use serde::Serialize;

use super::{
    desired::{desired, Me, State},
    Mode,
};
use crate::cluster::membership::HostInfo;

/// One row of `viking peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRow {
    pub name: String,
    pub address: IpAddr,
    pub vtep: Option<String>,
    pub port: Option<u16>,
    /// Routes to its instances in the kernel.
    pub routes: usize,
    /// `ok`, `not programmed` (the kernel lacks its FDB or neighbour entry) or
    /// `left out: <why>`.
    pub state: String,
}

/// The rows for host `me` given the members and the kernel's overlay state.
pub fn report(me: &str, members: &[HostInfo], kernel: &State) -> Vec<PeerRow> {
    let mode = if kernel.device.is_some() { Mode::Vxlan } else { Mode::HostGw };
    let m =
        Me { name: me.to_owned(), mode, device: kernel.device.clone(), address: kernel.address };
    let d = desired(&m, members, &[]);
    d.peers
        .into_iter()
        .map(|p| {
            let gateway = match p.address {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            };
            let routes = kernel.routes.values().filter(|r| Some(r.gateway) == gateway).count();
            let state = match &p.problem {
                Some(why) => format!("left out: {why}"),
                None => {
                    let programmed = mode == Mode::HostGw
                        || gateway.is_some_and(|g| {
                            kernel.neighbours.contains_key(&g)
                                && kernel.fdb.iter().any(|f| f.dst == g)
                        });
                    if programmed {
                        "ok".into()
                    } else {
                        "not programmed".into()
                    }
                }
            };
            PeerRow { name: p.name, address: p.address, vtep: p.mac, port: p.port, routes, state }
        })
        .collect()
}
