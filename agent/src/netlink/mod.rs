//! Netlink, behind small domain methods (netavark is the model): links, addresses and routes
//! of instance networks (`instance.rs`), and what the overlay programs: its VXLAN device
//! (`vxlan.rs`), forwarding entries (`fdb.rs`), static neighbours (`neigh.rs`) and gateway
//! routes (`routes.rs`). One connection speaks for the network namespace it was opened in;
//! `in_netns` runs work inside another namespace on a thread of its own.
use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::Path,
};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::route::{RouteProtocol, RouteScope},
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::netns::NetnsError;

pub mod fdb;
pub mod instance;
pub mod links;
pub mod neigh;
pub mod routes;
pub mod vxlan;

/// The routing protocol number Viking's routes carry, so they can be told from others.
pub const PROTO_VIKING: u8 = 77;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no link named {0}")]
    NoLink(String),
}

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// An Ethernet address (a VTEP's), written `02:42:0a:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }

    /// A locally administered unicast address derived from `seed` (FNV-1a): the same name
    /// gives the same address, so a recreated device keeps the MAC its peers know.
    pub fn derived(seed: &str) -> Self {
        let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let b = h.to_be_bytes();
        Self([0x02, b[3], b[4], b[5], b[6], b[7]])
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for Mac {
    type Err = String;

    /// Six hex octets separated by `:`; a multicast or all-zero address is refused (it cannot
    /// be a VTEP).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("{s:?} is not a MAC address like 02:42:0a:00:00:01");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if out == [0; 6] || out[0] & 1 == 1 {
            return Err(format!("{s} is not a unicast address"));
        }
        Ok(Self(out))
    }
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// A netlink connection in the network namespace it was opened in.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace (inside a tokio runtime).
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            // NB: the kernel answers ENODEV for a name it does not know.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(req(format!("looking up link {name}"))(e)),
        }
    }

    async fn index(&self, name: &str) -> Result<u32> {
        self.link_index(name).await?.ok_or_else(|| NetlinkError::NoLink(name.to_owned()))
    }

    /// Creates a veth pair `name` <-> `peer` in this namespace.
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<u32> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(req(format!("creating veth {name}/{peer}")))?;
        self.index(name).await
    }

    /// Moves a link into the network namespace open at `ns`.
    pub async fn set_link_ns(&self, name: &str, ns: &Path) -> Result<()> {
        let index = self.index(name).await?;
        let file = std::fs::File::open(ns)
            .map_err(|source| NetlinkError::Netns { path: ns.display().to_string(), source })?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(file.as_raw_fd()).build())
            .execute()
            .await
            .map_err(req(format!("moving {name} to {}", ns.display())))
    }

    pub async fn rename_link(&self, name: &str, new: &str) -> Result<u32> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).name(new.to_owned()).build())
            .execute()
            .await
            .map_err(req(format!("renaming {name} to {new}")))?;
        Ok(index)
    }

    pub async fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(req(format!("setting the MTU of {name} to {mtu}")))
    }

    pub async fn set_up(&self, name: &str) -> Result<()> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("setting {name} up")))
    }

    /// Deletes a link; one that is not there is not an error.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(index) = self.link_index(name).await? else { return Ok(()) };
        self.handle.link().del(index).execute().await.map_err(req(format!("deleting {name}")))
    }

    pub async fn add_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        let index = self.index(name).await?;
        self.handle
            .address()
            .add(index, addr, prefix)
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding {addr}/{prefix} to {name}")))
    }

    /// A host route `dest/32` out of link `dev` (scope link), Viking's protocol.
    pub async fn add_link_route(&self, dest: Ipv4Addr, prefix: u8, dev: &str) -> Result<()> {
        let index = self.index(dev).await?;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Other(PROTO_VIKING))
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding route {dest}/{prefix} dev {dev}")))
    }

    /// A route to `dest/prefix` through `gateway`; `onlink` when the gateway is not on a
    /// subnet of the link (the instance side's `169.254.1.1`).
    pub async fn add_route(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        dev: Option<&str>,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .gateway(gateway)
            .protocol(RouteProtocol::Other(PROTO_VIKING));
        if let Some(dev) = dev {
            b = b.output_interface(self.index(dev).await?).onlink();
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding route {dest}/{prefix} via {gateway}")))
    }
}

/// Runs `f` with a netlink connection inside the network namespace at `ns`, on a thread of its
/// own (a namespace is per thread), and waits for it.
pub async fn in_netns<T, F, Fut>(ns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let work = move || -> Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NetlinkError::Socket)?;
        rt.block_on(async { f(Netlink::connect()?).await })
    };
    crate::netns::run_in(Some(ns), work).await.map_err(|e| match e {
        NetnsError::Enter { path, source } => {
            NetlinkError::Netns { path: path.display().to_string(), source }
        }
        NetnsError::Died => NetlinkError::Socket(std::io::Error::other("netns thread died")),
    })?
}

/// Runs `f` with a netlink connection in `netns`, or in the caller's own namespace when `None`.
pub async fn in_netns_or_here<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    match netns {
        Some(ns) => in_netns(ns, f).await,
        None => f(Netlink::connect()?).await,
    }
}

/// Writes a sysctl of the calling thread's network namespace (`net/ipv4/ip_forward`).
pub fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new("/proc/sys").join(path), value)
        .map_err(|source| NetlinkError::Sysctl { path: path.to_owned(), source })
}
