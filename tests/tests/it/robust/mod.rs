//! Never stuck, never open: the agent under a kill -9 at any moment of an instance's start,
//! a full disk under its embedded store, hostile tokens and token files, a service with more
//! backends than the datapath holds, and a CLI whose output is cut short.
mod backend_limit;
mod cli;
mod crash;
mod full_disk;
mod token;
