//! The control plane: deploys stored with their plans, placement that never stops one stack
//! for a change in another, etcd's limits, and balance modes, on real agents and real etcd.
mod balance;
mod limits;
mod outages;
mod plans;
mod registrations;
