//! Routes to instances on other hosts ("host-gw"): each remote instance address is routed
//! through its host's address. It stands in for the VXLAN overlay until that lands
//! (docs/runtime-exec.md); it needs the hosts on one L2 segment, which the demo's are.
use std::{collections::BTreeMap, net::Ipv4Addr};

use super::{Netlink, NetlinkError};

/// Makes Viking's gateway routes equal `want` (instance address -> host address); returns
/// (added, removed). Link routes to local instances (no gateway) are left alone.
pub async fn sync(
    nl: &Netlink,
    want: &BTreeMap<Ipv4Addr, Ipv4Addr>,
) -> Result<(usize, usize), NetlinkError> {
    let have: BTreeMap<Ipv4Addr, Ipv4Addr> = nl
        .viking_routes()
        .await?
        .into_iter()
        .filter(|(_, prefix, _)| *prefix == 32)
        .filter_map(|(dest, _, gw)| gw.map(|g| (dest, g)))
        .collect();
    let mut removed = 0;
    for (dest, gw) in &have {
        if want.get(dest) != Some(gw) {
            nl.delete_route(*dest, 32).await?;
            removed += 1;
        }
    }
    let mut added = 0;
    for (dest, gw) in want {
        if have.get(dest) != Some(gw) {
            nl.add_route(*dest, 32, *gw, None).await?;
            added += 1;
        }
    }
    Ok((added, removed))
}
