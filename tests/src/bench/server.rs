//! The request/reply server of the connection benchmarks, bound inside the server namespace:
//! a fixed pool of threads blocked in accept() on one listener; each reads the request,
//! writes the reply, waits for the client to close, and closes.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{anyhow, Context as _};

use super::client::{REPLY, REQUEST};
use crate::guards::NetNs;

/// Runs `f` on a thread that has entered `ns`; sockets it creates live in that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = ns.path();
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in namespace panicked"))?
}

pub struct RrServer {
    pub addr: SocketAddr,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl RrServer {
    pub fn start(ns: &NetNs, addr: SocketAddr, workers: usize) -> anyhow::Result<Self> {
        let listener = in_netns(ns, move || {
            listen(addr).with_context(|| format!("listening on {addr} in the server ns"))
        })?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers.max(1))
            .map(|_| {
                let (l, s) = (listener.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((conn, _)) => serve(conn),
                            Err(_) if s.load(Ordering::Relaxed) => break,
                            Err(_) => std::thread::sleep(Duration::from_millis(1)),
                        }
                    }
                })
            })
            .collect();
        Ok(Self { addr, listener, stop, workers })
    }
}

/// A listener with a deep accept queue (SOMAXCONN): std's 128 overflows when the server threads lose the
/// CPU for a few milliseconds under a fast connect loop, and an overflow costs the client a
/// one-second SYN retransmit.
fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrStorage,
    };
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).context("socket")?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).context("bind")?;
    listen(&fd, Backlog::MAXCONN).context("listen")?;
    Ok(TcpListener::from(fd))
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < REQUEST.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => got += n,
        }
    }
    if conn.write_all(REPLY).is_err() {
        return;
    }
    // The client closes first (and so holds TIME_WAIT); wait for its FIN.
    while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
}

impl Drop for RrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown() on a listening socket wakes every thread blocked in accept().
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
