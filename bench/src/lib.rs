//! pqmesh benchmark harness: an HTTP backend, an open-loop load generator with HDR histograms,
//! the classical mTLS peers (nginx, haproxy, stunnel4) and pqmesh started as real processes,
//! /proc sampling for CPU and memory, and the report (Markdown table + SVG plots).
#![forbid(unsafe_code)]

pub mod backend;
pub mod gateway;
pub mod issuance;
pub mod jwt;
pub mod load;
pub mod markdown;
pub mod peers;
pub mod pqcost;
pub mod procstat;
pub mod report;
