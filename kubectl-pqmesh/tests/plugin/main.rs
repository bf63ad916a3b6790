//! The built `kubectl-pqmesh` binary against a real control plane and real sidecars started in
//! this process: with `--admin-url` (no cluster), against canned endpoints (classical key
//! exchange, NACKs, garbage), through a stand-in `kubectl` that answers `get -o json` from
//! fixtures and "port-forwards" to the in-process admin ports (so the cluster path runs too),
//! and offline injection through the control plane's injector.

mod admin_url;
mod analyze;
mod cluster;
mod errors;
mod inject;
mod rotate;
mod support;
