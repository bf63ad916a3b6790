//! Sidecar injection: the mutating admission webhook (`POST /inject`, AdmissionReview v1) that
//! adds the `pqmesh-init` container and the native sidecar `pqmesh-proxy` to pods.
//!
//! The core is pure (no I/O) so the kubectl plugin can inject offline with the same code:
//! [`plan`] computes the injected pod, [`inject_pod`] turns it into an RFC 6902 JSON Patch by
//! diffing, and [`review`] answers a whole AdmissionReview. [`serve`] is the HTTPS server.
//!
//! Selection: the webhook configuration's namespaceSelector/objectSelector decides which pods
//! reach the webhook (an AdmissionReview carries no namespace labels), so the webhook injects
//! every pod it receives unless the pod opts out (`pqmesh.io/inject: "false"`), uses the host
//! network, or is already injected. Offline callers pass the namespace's labels instead.

mod config;
mod metrics;
mod overrides;
mod patch;
mod pod;
mod probes;
mod review;
mod server;
mod syntax;

pub use config::{InjectConfig, ProxyResources, ProxySettings, SETTINGS};
pub use metrics::InjectMetrics;
pub use patch::{diff, escape_pointer_token, PatchOp};
pub use pod::{inject_pod, plan, Decision, InjectError, Plan, SkipReason};
pub use review::{fuzz_review, review, Outcome, ReviewError, Reviewed};
pub use server::{
    follow_serving_config, serve, spawn, webhook_server_config, SpawnError, SwappableCert,
    MAX_BODY_BYTES,
};

/// Namespace label (value `enabled`/`disabled`) and pod annotation (value `"true"`/`"false"`).
pub const INJECT_KEY: &str = "pqmesh.io/inject";
/// Set on every injected pod; the value is the injector's version.
pub const INJECTED_ANNOTATION: &str = "pqmesh.io/injected";
pub const EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: &str = "pqmesh.io/exclude-outbound-cidrs";
pub const EXCLUDE_INBOUND_PORTS_ANNOTATION: &str = "pqmesh.io/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS_ANNOTATION: &str = "pqmesh.io/exclude-outbound-ports";
/// Per-pod overrides of the injected sidecar's settings (see `overrides`).
pub use overrides::ANNOTATIONS as PROXY_ANNOTATIONS;

pub const INIT_CONTAINER: &str = "pqmesh-init";
pub const PROXY_CONTAINER: &str = "pqmesh-proxy";
pub const TOKEN_VOLUME: &str = "pqmesh-token";
pub const TRUST_VOLUME: &str = "pqmesh-trust";
/// emptyDir mounted at `/run` in pqmesh-init: iptables needs a writable `/run/xtables.lock`
/// while the container's root filesystem is read-only.
pub const XTABLES_LOCK_VOLUME: &str = "pqmesh-xtables-lock";

/// The one image carries both binaries and has no entrypoint (see the chart).
pub const SIDECAR_BINARY: &str = "/usr/local/bin/pqmesh-sidecar";
pub const TOKEN_DIR: &str = "/var/run/secrets/pqmesh";
pub const TOKEN_PATH: &str = "/var/run/secrets/pqmesh/token";
pub const TRUST_DIR: &str = "/var/run/pqmesh/trust";
/// The ConfigMap key the control plane publishes the trust bundle under.
pub const TRUST_BUNDLE_KEY: &str = "trust-bundle.pem";
pub const TRUST_BUNDLE_PATH: &str = "/var/run/pqmesh/trust/trust-bundle.pem";

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const ADMIN_PORT: u16 = 15000;

/// The injector's version, written to [`INJECTED_ANNOTATION`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
