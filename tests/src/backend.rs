//! Real TCP/UDP servers standing in for backends, each bound inside a test's namespace.
//!
//! TCP: greets every connection with `NAME PEER\n` (PEER is the client address the server
//! sees), then echoes lines; a line `stream N` makes it send N bytes and close, a line `reset`
//! makes it reset the connection.
//! UDP: answers every datagram with `NAME PEER`.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::guards::NetNs;

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn tcp(ns: &NetNs, name: &str, addr: SocketAddr) -> Self {
        let listener = ns.enter(move || TcpListener::bind(addr).expect("bind backend"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (s, n) = (stop.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let n = n.clone();
                        std::thread::spawn(move || serve_tcp(conn, &n, peer));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { name: name.to_owned(), addr, stop, thread: Some(thread) }
    }

    pub fn udp(ns: &NetNs, name: &str, addr: SocketAddr) -> Self {
        let sock = ns.enter(move || UdpSocket::bind(addr).expect("bind udp backend"));
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (s, n) = (stop.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{n} {peer}").as_bytes(), peer);
                }
            }
        });
        Self { name: name.to_owned(), addr, stop, thread: Some(thread) }
    }
}

/// Serves one connection: the greeting, then echo (and `stream N`).
pub fn serve_tcp(conn: TcpStream, name: &str, peer: SocketAddr) {
    let _ = conn.set_nonblocking(false);
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    if writeln!(w, "{name} {peer}").is_err() {
        return;
    }
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
        if let Some(n) = line.trim().strip_prefix("stream ") {
            let total: usize = n.parse().unwrap_or(0);
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let k = chunk.len().min(total - sent);
                if w.write_all(&chunk[..k]).is_err() {
                    return;
                }
                sent += k;
                // Slow enough that a test can restart the agent mid-transfer.
                std::thread::sleep(Duration::from_millis(2));
            }
            return;
        }
        if line.trim() == "reset" {
            // SO_LINGER 0: the close sends a RST.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            let _ = nix::sys::socket::setsockopt(&w, nix::sys::socket::sockopt::Linger, &linger);
            return;
        }
        if w.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
