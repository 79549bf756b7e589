//! etcd's request limits, which both stores enforce: what passes on one host passes on a
//! cluster (docs/store.md "Limits").
//!
//! - at most [`MAX_TXN_OPS`] compares, and as many operations in each branch, per transaction
//!   (etcd's `--max-txn-ops`, default 128);
//! - at most [`MAX_REQUEST_BYTES`] per request (etcd's `--max-request-bytes`, default 1.5 MiB).
//!
//! A request over a limit is refused whole with [`Limit`], which says which limit and by how
//! much; nothing of it is applied. Work that may be larger (a placement pass, a deploy of many
//! jobs) goes through `store::bulk`, which splits it.
use std::fmt;

use super::{Compare, Op, Txn};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1_572_864;
/// What each operation costs in a request besides its key and value (protobuf framing,
/// revisions, lease), rounded up.
const OP_OVERHEAD: usize = 16;

/// A request over one of the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    TooManyOps {
        what: &'static str,
        count: usize,
    },
    TooLarge {
        bytes: usize,
    },
    /// etcd itself refused the request as too large (a server configured below the defaults).
    Server {
        message: String,
    },
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::TooManyOps { what, count } => write!(
                f,
                "a transaction with {count} {what} (etcd allows {MAX_TXN_OPS} per transaction)"
            ),
            Limit::TooLarge { bytes } => write!(
                f,
                "a request of {bytes} bytes (etcd allows {MAX_REQUEST_BYTES} bytes, 1.5 MiB)"
            ),
            Limit::Server { message } => write!(f, "etcd refused it as too large: {message}"),
        }
    }
}

/// The size a compare takes in a request, about.
pub fn compare_bytes(c: &Compare) -> usize {
    OP_OVERHEAD
        + match c {
            Compare::Absent(k)
            | Compare::ModRevision(k, _)
            | Compare::PrefixUnchangedSince(k, _) => k.len(),
            Compare::Value(k, v) => k.len() + v.len(),
        }
}

/// The size an operation takes in a request, about.
pub fn op_bytes(o: &Op) -> usize {
    OP_OVERHEAD
        + match o {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } | Op::Get { key } => key.len(),
            Op::DeletePrefix { prefix } => prefix.len() * 2,
        }
}

/// Whether `txn` fits etcd's limits.
pub fn check_txn(txn: &Txn) -> Result<(), Limit> {
    for (what, count) in [
        ("compares", txn.when.len()),
        ("operations", txn.then.len()),
        ("operations in its else branch", txn.otherwise.len()),
    ] {
        if count > MAX_TXN_OPS {
            return Err(Limit::TooManyOps { what, count });
        }
    }
    let bytes = txn.when.iter().map(compare_bytes).sum::<usize>()
        + txn.then.iter().chain(&txn.otherwise).map(op_bytes).sum::<usize>();
    check_bytes(bytes)
}

/// Whether a put of `key` = `value` fits.
pub fn check_put(key: &str, value: &[u8]) -> Result<(), Limit> {
    check_bytes(OP_OVERHEAD + key.len() + value.len())
}

fn check_bytes(bytes: usize) -> Result<(), Limit> {
    if bytes > MAX_REQUEST_BYTES {
        return Err(Limit::TooLarge { bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_are_etcds() {
        let puts = |n: usize| (0..n).map(|i| Op::put(format!("/k/{i}"), "v")).collect::<Vec<_>>();
        assert!(check_txn(&Txn::when([]).then(puts(MAX_TXN_OPS))).is_ok());
        assert_eq!(
            check_txn(&Txn::when([]).then(puts(MAX_TXN_OPS + 1))),
            Err(Limit::TooManyOps { what: "operations", count: 129 })
        );
        let compares = (0..129).map(|i| Compare::Absent(format!("/k/{i}")));
        assert!(matches!(
            check_txn(&Txn::when(compares)),
            Err(Limit::TooManyOps { what: "compares", .. })
        ));
        assert!(check_put("/k", &vec![0u8; MAX_REQUEST_BYTES - 100]).is_ok());
        assert!(matches!(
            check_put("/k", &vec![0u8; MAX_REQUEST_BYTES]),
            Err(Limit::TooLarge { .. })
        ));
        let big = Txn::when([])
            .then([Op::put("/a", vec![0u8; 1 << 20]), Op::put("/b", vec![0u8; 1 << 20])]);
        assert!(matches!(check_txn(&big), Err(Limit::TooLarge { .. })));
    }
}
