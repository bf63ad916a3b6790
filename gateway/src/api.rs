//! The supported subset of the Kubernetes Gateway API (`gateway.networking.k8s.io/v1`) and the
//! gateway's own `EdgePolicy` (`pqmesh.io/v1alpha1`), as serde types.
//!
//! Why our own types: the `gateway-api` crate is built on kube 4 / k8s-openapi 0.28, the workspace
//! on kube 5 / 0.29. Every struct denies unknown fields, so a field this gateway does not implement
//! (say `timeouts`, `sessionPersistence`, `mirror` filters) refuses that object with a message
//! naming it, instead of being silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The EdgePolicy's spec lives in the policy crate, so its CRD comes from the same generator as
/// the AccessPolicy's and TokenIssuer's (`pqmesh-control-plane crds`).
pub use pqmesh_policy::edge::{
    Accept, EdgePolicySpec, EdgeToken, RateLimitKey, RateLimitSpec, TargetRef,
};

pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
pub const PQMESH_API_VERSION: &str = "pqmesh.io/v1alpha1";
/// What a GatewayClass must name for this gateway to serve its Gateways.
pub const CONTROLLER_NAME: &str = "pqmesh.io/gateway";

/// Declares the API's object types: each derives `Debug, Clone, Deserialize, PartialEq` and
/// denies unknown fields (camelCase keys), here once, so no type can forget to refuse a field
/// it does not implement.
macro_rules! api_types {
    ($($(#[$meta:meta])* pub struct $name:ident $body:tt)*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, Deserialize, PartialEq)]
            #[serde(deny_unknown_fields, rename_all = "camelCase")]
            pub struct $name $body
        )*
    };
}

api_types! {
    pub struct Meta {
        pub name: String,
        #[serde(default = "default_namespace")]
        pub namespace: String,
        #[serde(default)]
        pub creation_timestamp: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub annotations: BTreeMap<String, String>,
        #[serde(default)]
        pub generation: Option<i64>,
    }

    pub struct GatewayClass {
        pub api_version: String,
        pub kind: String,
        pub metadata: Meta,
        pub spec: GatewayClassSpec,
    }

    pub struct GatewayClassSpec {
        pub controller_name: String,
        #[serde(default)]
        pub description: Option<String>,
    }

    pub struct Gateway {
        pub api_version: String,
        pub kind: String,
        pub metadata: Meta,
        pub spec: GatewaySpec,
    }

    pub struct GatewaySpec {
        pub gateway_class_name: String,
        pub listeners: Vec<Listener>,
    }

    pub struct Listener {
        pub name: String,
        #[serde(default)]
        pub hostname: Option<String>,
        pub port: u16,
        pub protocol: Protocol,
        #[serde(default)]
        pub tls: Option<ListenerTls>,
        /// Only the default is supported: routes of the Gateway's own namespace (`from: Same`),
        /// of kind HTTPRoute. The API server fills it in on every listener.
        #[serde(default)]
        pub allowed_routes: Option<AllowedRoutes>,
    }

    pub struct AllowedRoutes {
        #[serde(default)]
        pub namespaces: Option<RouteNamespaces>,
        #[serde(default)]
        pub kinds: Vec<RouteGroupKind>,
    }

    pub struct RouteNamespaces {
        #[serde(default)]
        pub from: Option<String>,
        #[serde(default)]
        pub selector: Option<serde_yaml::Value>,
    }

    pub struct RouteGroupKind {
        #[serde(default)]
        pub group: Option<String>,
        pub kind: String,
    }

    pub struct ListenerTls {
        #[serde(default)]
        pub mode: Option<String>,
        #[serde(default)]
        pub certificate_refs: Vec<SecretRef>,
        /// Implementation-specific options (Gateway API `tls.options`): `pqmesh.io/key-exchange`
        /// is `prefer-pq` (default) or `require-pq`.
        #[serde(default)]
        pub options: BTreeMap<String, String>,
    }

    pub struct SecretRef {
        #[serde(default)]
        pub group: Option<String>,
        #[serde(default)]
        pub kind: Option<String>,
        pub name: String,
        #[serde(default)]
        pub namespace: Option<String>,
    }

    pub struct HttpRoute {
        pub api_version: String,
        pub kind: String,
        pub metadata: Meta,
        pub spec: HttpRouteSpec,
    }

    pub struct HttpRouteSpec {
        pub parent_refs: Vec<ParentRef>,
        #[serde(default)]
        pub hostnames: Vec<String>,
        #[serde(default)]
        pub rules: Vec<RouteRule>,
    }

    pub struct ParentRef {
        #[serde(default)]
        pub group: Option<String>,
        #[serde(default)]
        pub kind: Option<String>,
        pub name: String,
        #[serde(default)]
        pub namespace: Option<String>,
        #[serde(default)]
        pub section_name: Option<String>,
        #[serde(default)]
        pub port: Option<u16>,
    }

    pub struct RouteRule {
        #[serde(default)]
        pub name: Option<String>,
        #[serde(default)]
        pub matches: Vec<RouteMatch>,
        #[serde(default)]
        pub filters: Vec<Filter>,
        #[serde(default)]
        pub backend_refs: Vec<BackendRef>,
    }

    #[derive(Default)]
    pub struct RouteMatch {
        #[serde(default)]
        pub path: Option<PathMatch>,
        #[serde(default)]
        pub method: Option<String>,
        #[serde(default)]
        pub headers: Vec<ValueMatch>,
        #[serde(default)]
        pub query_params: Vec<ValueMatch>,
    }

    pub struct PathMatch {
        #[serde(rename = "type", default = "path_prefix")]
        pub kind: PathMatchType,
        #[serde(default = "slash")]
        pub value: String,
    }

    /// A header or query-parameter match (only `Exact`; `RegularExpression` is refused).
    pub struct ValueMatch {
        #[serde(rename = "type", default = "exact")]
        pub kind: ExactOnly,
        pub name: String,
        pub value: String,
    }

    pub struct Filter {
        #[serde(rename = "type")]
        pub kind: FilterType,
        #[serde(default)]
        pub request_header_modifier: Option<HeaderModifier>,
        #[serde(default)]
        pub response_header_modifier: Option<HeaderModifier>,
        #[serde(default)]
        pub url_rewrite: Option<UrlRewrite>,
        #[serde(default)]
        pub request_redirect: Option<RequestRedirect>,
    }

    #[derive(Default)]
    pub struct HeaderModifier {
        #[serde(default)]
        pub set: Vec<Header>,
        #[serde(default)]
        pub add: Vec<Header>,
        #[serde(default)]
        pub remove: Vec<String>,
    }

    pub struct Header {
        pub name: String,
        pub value: String,
    }

    #[derive(Default)]
    pub struct UrlRewrite {
        #[serde(default)]
        pub hostname: Option<String>,
        #[serde(default)]
        pub path: Option<PathModifier>,
    }

    pub struct PathModifier {
        #[serde(rename = "type")]
        pub kind: PathModifierType,
        #[serde(default)]
        pub replace_full_path: Option<String>,
        #[serde(default)]
        pub replace_prefix_match: Option<String>,
    }

    #[derive(Default)]
    pub struct RequestRedirect {
        #[serde(default)]
        pub scheme: Option<String>,
        #[serde(default)]
        pub hostname: Option<String>,
        #[serde(default)]
        pub path: Option<PathModifier>,
        #[serde(default)]
        pub port: Option<u16>,
        #[serde(default)]
        pub status_code: Option<u16>,
    }

    pub struct BackendRef {
        #[serde(default)]
        pub group: Option<String>,
        #[serde(default)]
        pub kind: Option<String>,
        pub name: String,
        #[serde(default)]
        pub namespace: Option<String>,
        pub port: u16,
        #[serde(default = "one")]
        pub weight: u32,
    }

    /// pqmesh's policy for the edge, attached to an HTTPRoute by `targetRef` (Gateway API policy
    /// attachment): the token an outside client must present, the scopes it needs and a rate limit.
    pub struct EdgePolicy {
        pub api_version: String,
        pub kind: String,
        pub metadata: Meta,
        pub spec: EdgePolicySpec,
    }

    /// Local mode: which mesh endpoints serve a Service named by a `backendRef` (in Kubernetes this
    /// comes from discovery). Each endpoint is what an explicit-mode sidecar is given as its peer:
    /// the sidecar's address and the SPIFFE ID it must present.
    #[derive(Default)]
    pub struct BackendsFile {
        #[serde(default)]
        pub services: Vec<ServiceEntry>,
    }

    pub struct ServiceEntry {
        /// `<namespace>/<name>`.
        pub name: String,
        pub port: u16,
        pub endpoints: Vec<EndpointEntry>,
    }

    pub struct EndpointEntry {
        pub address: String,
        pub identity: String,
    }
}

fn default_namespace() -> String {
    "default".to_owned()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    HTTP,
    HTTPS,
}

pub const KEY_EXCHANGE_OPTION: &str = "pqmesh.io/key-exchange";

fn path_prefix() -> PathMatchType {
    PathMatchType::PathPrefix
}
fn slash() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
}

fn exact() -> ExactOnly {
    ExactOnly::Exact
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ExactOnly {
    Exact,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    URLRewrite,
    RequestRedirect,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

fn one() -> u32 {
    1
}
