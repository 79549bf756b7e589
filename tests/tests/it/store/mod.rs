//! The store and what is written once against it, each test against a real etcd and the
//! embedded store (`store_tests!`).
mod addresses;
mod bad_input;
mod bulk;
mod cli;
mod cluster;
mod embedded;
mod leader;
mod membership;
mod ports;
mod semantics;
mod tls;
mod watch;
