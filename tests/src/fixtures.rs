//! Policy fixtures the end-to-end tests share: the `corp` TokenIssuer of the test OAuth server
//! and the `orders` AccessPolicy, as the YAML a user would write. Each test adds only what it is
//! about (a cache bound, a clock skew, its peers and rules).

use crate::oauth::{self, OAuthServer};

/// TokenIssuer `shop/corp` for `oauth`: its issuer, audience `orders`, its JWKS (RS256) and
/// introspection with the gateway client's credentials (Secret `gateway`, key `client-secret`).
/// `spec_extra` and `introspection_extra` are YAML lines added to the spec and to its
/// `introspection` block (indented by two and four spaces, each ending in a newline).
pub fn corp_issuer(oauth: &OAuthServer, spec_extra: &str, introspection_extra: &str) -> String {
    format!(
        r#"apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {{name: corp, namespace: shop}}
spec:
  issuer: {iss}
  audiences: [orders]
  jwksUri: {jwks}
  allowedAlgorithms: [RS256]
{spec_extra}  introspection:
    endpoint: {introspect}
    clientId: {client}
    clientSecretRef: {{name: gateway, key: client-secret}}
{introspection_extra}"#,
        iss = oauth.issuer,
        jwks = oauth.jwks_uri,
        introspect = oauth.introspection_endpoint,
        client = oauth::GATEWAY_CLIENT_ID,
    )
}

/// AccessPolicy `shop/orders`, selecting `app: orders`, requiring a `corp` token: `ports`
/// (empty: every port), `peers` (a YAML list) and `rules` (YAML lines of the rules list, each
/// indented by four spaces and ending in a newline).
pub fn orders_policy(ports: &[u16], peers: &str, rules: &str) -> String {
    let ports = match ports {
        [] => String::new(),
        p => format!(
            "  ports: [{}]\n",
            p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        ),
    };
    format!(
        r#"apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {{name: orders, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
{ports}  peers: {peers}
  token: {{issuers: [corp]}}
  rules:
{rules}"#
    )
}
