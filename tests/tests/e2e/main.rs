//! The workspace's end-to-end tests, linked into one test binary (one link instead of eight keeps
//! the build small and fast on a 2-core CI machine). Each module's own doc comment says what it
//! covers and what it needs.

mod certify;
mod external_peers;
mod handshake_policy;
mod kubernetes;
mod mesh;
mod oauth_server;
mod operations;
mod policy;
mod policy_resume;
mod rotation;
mod transparent;
