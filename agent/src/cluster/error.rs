use crate::store::{BadValue, StoreError};

/// What can go wrong allocating, registering or electing. Bad stored data names its key;
/// a failed operation changes nothing in the store.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    BadValue(#[from] BadValue),
    #[error("{what} name {name:?} cannot be used in a store key: {reason}")]
    BadName { what: &'static str, name: String, reason: &'static str },
    #[error(
        "no ambassador port left in {range} ({used} in use); release services or widen the range"
    )]
    PortsExhausted { range: String, used: usize },
    #[error("no virtual IP left in {range} ({used} in use); remove stacks or widen the range")]
    VipsExhausted { range: String, used: usize },
    #[error("no free /{prefix} left in the address pool {pool} for stack {stack}")]
    PoolExhausted { pool: String, prefix: u8, stack: String },
    #[error("stack {stack} needs {needed} addresses but the pool {pool} holds fewer")]
    PoolTooSmall { stack: String, needed: u64, pool: String },
    #[error("stack {stack} has no subnet yet (allocate one for it first)")]
    NoSubnet { stack: String },
    #[error("stack {stack}'s subnet {subnet} is full ({used} addresses in use)")]
    SubnetFull { stack: String, subnet: String, used: usize },
    #[error("stack {stack}'s subnet {subnet} holds {capacity} containers, {needed} wanted, and it has addresses in use: release the stack to resize it")]
    SubnetTooSmall { stack: String, subnet: String, capacity: u64, needed: u64 },
    #[error("{what}: gave up after {attempts} attempts lost to concurrent writers")]
    Contention { what: String, attempts: u32 },
    #[error("{0}")]
    Invalid(String),
}

impl ClusterError {
    pub(crate) fn bad_value(key: &str, value: &[u8], reason: impl Into<String>) -> Self {
        Self::BadValue(BadValue {
            key: key.to_string(),
            value: String::from_utf8_lossy(value).into_owned(),
            reason: reason.into(),
        })
    }
}

pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), ClusterError> {
    match crate::store::keys::segment_problem(name) {
        Some(reason) => Err(ClusterError::BadName { what, name: name.to_string(), reason }),
        None => Ok(()),
    }
}
