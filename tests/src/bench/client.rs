//! The client side of the benchmark: loops run by `vk-bench cps` and `vk-bench latency` as
//! children inside the client namespace and the datapath's cgroup, so that Viking's hooks see
//! their sockets exactly as they would see an application's.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use serde::{Deserialize, Serialize};

/// The request each new connection sends, and the reply it waits for (server.rs).
pub const REQUEST: &[u8] = b"ping\n";
pub const REPLY: &[u8] = b"pong\n";

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What `vk-bench cps` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpsResult {
    /// Connections that connected, sent the request, read the whole reply and closed.
    pub conns: u64,
    pub errors: u64,
    pub secs: f64,
    pub first_error: Option<String>,
}

impl CpsResult {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.conns as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// New connections per second: `threads` loops of connect, send REQUEST, read REPLY, close,
/// for `secs` seconds.
pub fn cps(addr: SocketAddr, secs: f64, threads: usize) -> CpsResult {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> =
        (0..threads.max(1)).map(|_| std::thread::spawn(move || cps_loop(addr, deadline))).collect();
    let mut total = CpsResult::default();
    for h in handles {
        match h.join() {
            Ok(r) => {
                total.conns += r.conns;
                total.errors += r.errors;
                if total.first_error.is_none() {
                    total.first_error = r.first_error;
                }
            }
            Err(_) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| "client thread panicked".into());
            }
        }
    }
    total.secs = start.elapsed().as_secs_f64();
    total
}

fn cps_loop(addr: SocketAddr, deadline: Instant) -> CpsResult {
    let mut r = CpsResult::default();
    // At least one request each, so that SECS = 0 is a one-shot check.
    loop {
        match one_request(addr) {
            Ok(()) => r.conns += 1,
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert_with(|| e.to_string());
                // Don't spin on a persistent failure (e.g. no ephemeral port left).
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if Instant::now() >= deadline {
            return r;
        }
    }
}

fn one_request(addr: SocketAddr) -> std::io::Result<()> {
    exchange(TcpStream::connect(addr)?)
}

/// One request and its reply on a connected stream, then close.
pub fn exchange(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(REQUEST)?;
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < REPLY.len() {
        match s.read(&mut buf[got..])? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    if &buf[..got] != REPLY {
        return Err(std::io::Error::other("unexpected reply"));
    }
    Ok(())
}

/// What `vk-bench latency` prints: one duration per connect().
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyResult {
    pub samples_ns: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Times `samples` blocking connect() calls to `addr` (after `warmup` untimed ones). Only the
/// connect() syscall is timed: socket creation and close are not. Each socket is closed with
/// SO_LINGER 0 (a reset), so no TIME_WAIT state builds up between samples.
pub fn latency(addr: SocketAddrV4, samples: usize, warmup: usize) -> LatencyResult {
    let sa = SockaddrIn::from(addr);
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let mut r = LatencyResult { samples_ns: Vec::with_capacity(samples), ..Default::default() };
    let fail = |r: &mut LatencyResult, e: nix::Error| {
        r.errors += 1;
        r.first_error.get_or_insert_with(|| e.to_string());
    };
    for i in 0..warmup + samples {
        let fd = match socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None) {
            Ok(fd) => fd,
            Err(e) => {
                fail(&mut r, e);
                continue;
            }
        };
        let t = Instant::now();
        let res = connect(fd.as_raw_fd(), &sa);
        let dt = t.elapsed();
        match res {
            Ok(()) => {
                if i >= warmup {
                    r.samples_ns.push(dt.as_nanos() as u64);
                }
                if let Err(e) = setsockopt(&fd, sockopt::Linger, &linger) {
                    fail(&mut r, e);
                }
            }
            Err(e) => fail(&mut r, e),
        }
    }
    r
}

/// One request/reply exchange: a check that a path answers before it is measured.
pub fn reachable(addr: SocketAddr) -> bool {
    one_request(addr).is_ok()
}

/// Mean, median and 99th percentile of durations in nanoseconds, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyStats {
    pub samples: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub fn stats(samples_ns: &[u64]) -> LatencyStats {
    if samples_ns.is_empty() {
        return LatencyStats::default();
    }
    let mut sorted = samples_ns.to_vec();
    sorted.sort_unstable();
    let mean = sorted.iter().map(|&n| n as f64).sum::<f64>() / sorted.len() as f64;
    LatencyStats {
        samples: sorted.len(),
        mean_us: mean / 1e3,
        p50_us: percentile(&sorted, 50.0) as f64 / 1e3,
        p99_us: percentile(&sorted, 99.0) as f64 / 1e3,
        max_us: sorted.last().copied().unwrap_or(0) as f64 / 1e3,
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of measurements (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn stats_and_median() {
        let s = stats(&[1000, 2000, 3000, 4000]);
        assert_eq!(s.samples, 4);
        assert!((s.mean_us - 2.5).abs() < 1e-9);
        assert!((s.p50_us - 2.0).abs() < 1e-9);
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
    }
}
