//! The workspace's end-to-end tests, linked into one test binary (one link instead of eight keeps
//! the build small and fast on a 2-core CI machine). Each module's own doc comment says what it
//! covers and what it needs.

mod acceptance_local;
mod adversarial;
mod adversarial_identity;
mod adversarial_phantom;
mod app_receives;
mod certify;
mod cli;
mod differential;
mod external_peers;
mod faults;
mod gateway;
mod gateway_abuse;
mod gateway_kubernetes;
mod gateway_kubernetes_status;
mod gateway_outside_review;
mod gateway_refused_objects;
mod gateway_review10;
mod gateway_review12;
mod handshake_policy;
mod hostile_clients;
mod http_relay;
mod kubernetes;
mod kubernetes_acceptance;
mod kubernetes_rotation;
mod mesh;
mod oauth_server;
mod operations;
mod outage;
mod policy;
mod policy_resume;
mod prometheus_dashboards;
mod rotation;
mod transparent;
mod transparent_balancing;
