#![no_std]
// NB: an empty library target so that the agent can name this crate as a build-dependency
// (cargo then rebuilds the agent when the programs change); the programs are in main.rs.
