//! The client side of the integration tests, run inside a test's namespace and cgroup (so
//! that the datapath under test sees its sockets). Prints JSON lines (viking_tests::probe).
//!
//!   vk-probe tcp ADDR [COUNT]      connect, getpeername, read greeting, close; COUNT times
//!   vk-probe reset ADDR [COUNT]    as tcp, then ask the backend to reset the connection and
//!                                  close once the RST is in; COUNT times
//!   vk-probe udp ADDR [connected]  one datagram by sendto (or connect+send), one reply
//!   vk-probe udp-pinned ADDR       connected UDP: one exchange, print "ready", wait for a line
//!                                  on stdin, then the same socket again and a new socket
//!   vk-probe reconnect ADDR1 ADDR2  one TCP socket: connect to ADDR1, print the outcome and
//!                                  "ready", wait for a line on stdin, connect the same socket
//!                                  to ADDR2 (as after a failed connect), greet, close
//!   vk-probe hold ADDR N           open N connections, print them, print "ready", wait for
//!                                  stdin to close, then check each still echoes
//!   vk-probe stream ADDR BYTES     ask for BYTES and read them all
//!   vk-probe loop ADDR             connect/greet/close until stdin closes
//!   vk-probe serve ADDR [NAME]     a TCP backend (tests/src/backend.rs) named NAME (default:
//!                                  $HOSTNAME), for jobs run by the exec runtime; it also
//!                                  answers UDP datagrams on ADDR with `NAME/udp PEER`
//!
//! VK_PROBE_TIMEOUT_MS sets the connect and read timeout (default 5000).
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use viking_tests::probe::{Conn, Summary};

fn timeout() -> Duration {
    let ms = std::env::var("VK_PROBE_TIMEOUT_MS").ok().and_then(|v| v.parse().ok());
    Duration::from_millis(ms.unwrap_or(5000))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage());
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match args.get(1).map(String::as_str) {
        Some("tcp") => {
            let count: usize = arg(3).parse().unwrap_or(1);
            for _ in 0..count {
                emit(&tcp_once(addr).1);
            }
        }
        Some("reset") => {
            let count: usize = arg(3).parse().unwrap_or(1);
            for _ in 0..count {
                emit(&reset_once(addr));
            }
        }
        Some("udp") => emit(&udp_once(addr, arg(3) == "connected")),
        Some("udp-pinned") => udp_pinned(addr),
        Some("reconnect") => {
            let second: SocketAddr = arg(3).parse().unwrap_or_else(|_| usage());
            reconnect(addr, second);
        }
        Some("hold") => hold(addr, arg(3).parse().unwrap_or(1)),
        Some("stream") => stream(addr, arg(3).parse().unwrap_or(0)),
        Some("loop") => connect_loop(addr),
        Some("serve") => serve(addr, args.get(3).cloned()),
        _ => usage(),
    }
}

fn serve(addr: SocketAddr, name: Option<String>) {
    let name = name.or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "probe".into());
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vk-probe serve {addr}: {e}");
            std::process::exit(1)
        }
    };
    eprintln!("{name} serving on {addr}");
    match UdpSocket::bind(addr) {
        Ok(sock) => {
            let n = format!("{name}/udp");
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{n} {peer}").as_bytes(), peer);
                }
            });
        }
        Err(e) => eprintln!("vk-probe serve {addr}/udp: {e} (TCP only)"),
    }
    for conn in listener.incoming().flatten() {
        let peer = conn.peer_addr().unwrap_or(addr);
        let n = name.clone();
        std::thread::spawn(move || viking_tests::backend::serve_tcp(conn, &n, peer));
    }
}

fn usage() -> ! {
    eprintln!("usage: vk-probe tcp|udp|hold|stream|loop|serve ADDR [ARG]");
    std::process::exit(2)
}

fn emit<T: serde::Serialize>(v: &T) {
    let line = serde_json::to_string(v).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn failed(e: &std::io::Error) -> Conn {
    Conn { peer: None, reply: None, errno: e.raw_os_error(), error: Some(e.to_string()) }
}

fn tcp_once(addr: SocketAddr) -> (Option<BufReader<TcpStream>>, Conn) {
    match TcpStream::connect_timeout(&addr, timeout()) {
        Ok(s) => greet(s),
        Err(e) => (None, failed(&e)),
    }
}

/// Reads a connected socket's greeting: the connection as the probe reports it, and the
/// socket to go on with.
fn greet(s: TcpStream) -> (Option<BufReader<TcpStream>>, Conn) {
    let _ = s.set_read_timeout(Some(timeout()));
    let peer = s.peer_addr().ok().map(|p| p.to_string());
    let mut r = BufReader::new(s);
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(_) => {
            let conn = Conn { peer, reply: Some(line.trim().to_owned()), errno: None, error: None };
            (Some(r), conn)
        }
        Err(e) => (None, failed(&e)),
    }
}

/// `tcp_once`, then the backend is asked to reset the connection, and the socket is closed
/// once the RST has arrived (in TCP state CLOSE).
fn reset_once(addr: SocketAddr) -> Conn {
    let (r, mut conn) = tcp_once(addr);
    let Some(mut r) = r else {
        return conn;
    };
    if let Err(e) = r.get_mut().write_all(b"reset\n") {
        return failed(&e);
    }
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => conn,
        other => {
            conn.error = Some(format!("no reset from the backend: {other:?}"));
            conn
        }
    }
}

fn udp_once(addr: SocketAddr, connected: bool) -> Conn {
    let bind: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap_or(addr);
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    let _ = sock.set_read_timeout(Some(timeout()));
    let mut buf = [0u8; 2048];
    if connected {
        if let Err(e) = sock.connect(addr).and_then(|_| sock.send(b"ping")) {
            return failed(&e);
        }
        let peer = sock.peer_addr().ok().map(|p| p.to_string());
        match sock.recv(&mut buf) {
            Ok(n) => Conn {
                peer,
                reply: Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                errno: None,
                error: None,
            },
            Err(e) => failed(&e),
        }
    } else {
        if let Err(e) = sock.send_to(b"ping", addr) {
            return failed(&e);
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => Conn {
                peer: Some(from.to_string()),
                reply: Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                errno: None,
                error: None,
            },
            Err(e) => failed(&e),
        }
    }
}

fn udp_pinned(addr: SocketAddr) {
    let bind: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap_or(addr);
    let sock = match UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|()| s)) {
        Ok(s) => s,
        Err(e) => return emit(&failed(&e)),
    };
    let _ = sock.set_read_timeout(Some(timeout()));
    let exchange = |sock: &UdpSocket| {
        let mut buf = [0u8; 2048];
        match sock.send(b"ping").and_then(|_| sock.recv(&mut buf)) {
            Ok(n) => Conn {
                peer: sock.peer_addr().ok().map(|p| p.to_string()),
                reply: Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                errno: None,
                error: None,
            },
            Err(e) => failed(&e),
        }
    };
    emit(&exchange(&sock));
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    // The same socket: ended by the datapath if its backend left.
    emit(&exchange(&sock));
    emit(&udp_once(addr, true));
}

/// One TCP socket connected twice: a failed connect disconnects it, and it may connect again.
fn reconnect(first: SocketAddr, second: SocketAddr) {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd as _;
    let family = if first.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = match socket(family, SockType::Stream, SockFlag::empty(), None) {
        Ok(fd) => fd,
        Err(e) => return emit(&failed(&e.into())),
    };
    let attempt = |to: SocketAddr| connect(fd.as_raw_fd(), &SockaddrStorage::from(to));
    match attempt(first) {
        Ok(()) => {
            emit(&Conn { peer: Some(first.to_string()), reply: None, errno: None, error: None })
        }
        Err(e) => emit(&failed(&e.into())),
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if let Err(e) = attempt(second) {
        return emit(&failed(&e.into()));
    }
    emit(&greet(TcpStream::from(fd)).1);
}

fn wait_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn hold(addr: SocketAddr, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        let (r, conn) = tcp_once(addr);
        emit(&conn);
        held.extend(r);
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    wait_stdin_eof();
    let mut summary = Summary::default();
    for mut r in held {
        let mut line = String::new();
        let echoed = r.get_mut().write_all(b"ping\n").is_ok()
            && r.read_line(&mut line).is_ok()
            && line == "ping\n";
        if echoed {
            summary.ok += 1;
        } else {
            summary.failed += 1;
        }
    }
    emit(&summary);
}

fn stream(addr: SocketAddr, bytes: u64) {
    let mut summary = Summary::default();
    match tcp_once(addr) {
        (Some(mut r), _) => {
            let _ = r.get_mut().set_read_timeout(Some(Duration::from_secs(30)));
            let asked = r.get_mut().write_all(format!("stream {bytes}\n").as_bytes());
            let mut buf = vec![0u8; 64 * 1024];
            while asked.is_ok() {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => summary.bytes += k as u64,
                    Err(e) => {
                        summary.errors.push(e.to_string());
                        break;
                    }
                }
            }
            summary.ok = u64::from(summary.bytes == bytes);
        }
        (None, conn) => summary.errors.extend(conn.error),
    }
    emit(&summary);
}

fn connect_loop(addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        wait_stdin_eof();
        let _ = tx.send(());
    });
    let mut summary = Summary::default();
    while rx.try_recv().is_err() {
        match tcp_once(addr).1 {
            Conn { reply: Some(_), .. } => summary.ok += 1,
            c => {
                summary.failed += 1;
                summary.errors.extend(c.error);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    emit(&summary);
}
