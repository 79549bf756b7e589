//! Network-namespace cookies: what a netns-scoped service key (`Frontend::netns`) holds.
use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use nix::sched::{setns, CloneFlags};

/// The cookie of the network namespace at `ns` (`/proc/<pid>/ns/net` or a bind mount), as
/// `bpf_get_netns_cookie` sees it. Reads it on a short-lived thread that joins the namespace,
/// so the caller's own namespace is untouched.
pub fn netns_cookie(ns: &Path) -> std::io::Result<u64> {
    let file = File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            current_cookie()
        })
        .join()
        .map_err(|_| std::io::Error::other("the netns thread panicked"))?
    })
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> std::io::Result<u64> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and a buffer of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::addr_of_mut!(cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_namespace_has_a_stable_nonzero_cookie() {
        let a = super::current_cookie().unwrap();
        let b = super::netns_cookie(std::path::Path::new("/proc/self/ns/net")).unwrap();
        assert_ne!(a, 0);
        assert_eq!(a, b);
    }
}
