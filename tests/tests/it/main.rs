//! Viking's integration tests, in one binary (each test binary would link every dependency
//! again): a module per topic. They are privileged: each makes its own network namespaces,
//! cgroups and bpffs directories and removes them on Drop, so they run in parallel.
mod cluster;
mod control;
mod datapath;
mod deploy;
mod discovery;
mod docker_agent;
mod docker_build;
mod embassy;
mod names;
mod ops;
mod overlay;
mod robust;
mod runtime_docker;
mod stacks;
mod store;
mod vpc;
