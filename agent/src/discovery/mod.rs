//! Discovery: service registrations (seed 002's format, under `/services/`) and the
//! `BACKEND_*` descriptors of embassy mode (seeds 002 and 004).
//!
//! - `registration`: the registration record and its key
//! - `descriptor`: `BACKEND_X=name[tags];port/proto` parsing and matching
//! - `endpoints`: the registrations known, by key and by service
//! - `registrator`: running instances -> their registrations
//! - `registered`: what the reconciler keeps of every registration
//! - `embassy`: containers' descriptors -> netns-scoped services
//! - `limit`: a service with more backends than the datapath holds for one
//! - `sync`: the store -> the datapath
pub mod descriptor;
pub mod embassy;
pub mod endpoints;
pub mod limit;
pub mod registered;
pub mod registration;
pub mod registrator;
pub mod sync;
