//! The in-kernel service datapath: programs attached to a test cgroup, clients and servers in
//! the test's own network namespaces.
mod balance;
mod chain;
mod conns;
mod floor;
mod health;
mod redis;
mod restart;
mod scoped;
mod stale;
mod tcp;
mod udp;
mod update;
