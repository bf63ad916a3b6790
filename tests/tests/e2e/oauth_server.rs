//! The OAuth server the phantom-token tests run against (oidc-provider on Node 24, see
//! tests/oauth/README.md): opaque tokens, RFC 9701 signed introspection for the gateway client,
//! revocation, expiry, outages and key rotation behave as the sidecar expects.

use pqmesh_tests::oauth::{
    decode_jwt, header, OAuthServer, GATEWAY_CLIENT_ID, INTROSPECTION_JWT, PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
};

#[tokio::test]
async fn signed_introspection_revocation_and_key_rotation() {
    let mut server = OAuthServer::start(300).await;
    let token = server.token("orders:read orders:write").await;
    assert!(
        !token.contains('.'),
        "client_credentials tokens are opaque, got {token}"
    );

    // RFC 9701: a JWT signed with the provider's key, for the gateway, wrapping RFC 7662.
    let r = server.introspect(&token, INTROSPECTION_JWT).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.content_type(),
        "application/token-introspection+jwt; charset=utf-8"
    );
    assert_eq!(header(&r.headers, "cache-control"), "no-store");
    let (h, p) = decode_jwt(&r.body);
    assert_eq!(h["typ"], "token-introspection+jwt");
    assert_eq!(h["alg"], "RS256");
    assert_eq!(h["kid"], server.kid().as_str());
    assert_eq!(p["iss"], server.issuer.as_str());
    assert_eq!(p["aud"], GATEWAY_CLIENT_ID);
    assert!(p["iat"].is_u64());
    let ti = &p["token_introspection"];
    assert_eq!(ti["active"], true, "{p}");
    assert_eq!(ti["client_id"], "shop-client");
    assert_eq!(ti["scope"], "orders:read orders:write");
    assert_eq!(ti["tenant"], "acme");
    assert_eq!(ti["token_type"], "Bearer");
    assert!(ti["exp"].as_u64().unwrap() > ti["iat"].as_u64().unwrap());
    // What the sidecar now requires of a real response: the token's exp (an integer), a fresh
    // response iat, a lifetime within the default one-day bound, and one scope claim.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(p["iat"].as_u64().unwrap().abs_diff(now) <= 5, "{p}");
    assert_eq!(
        ti["exp"].as_u64().unwrap() - ti["iat"].as_u64().unwrap(),
        300
    );
    assert!(ti.get("scp").is_none() && p.get("scp").is_none(), "{p}");

    // Plain RFC 7662 JSON for any other Accept, application/jwt included.
    for accept in ["application/json", "application/jwt"] {
        let r = server.introspect(&token, accept).await;
        assert_eq!(
            r.content_type(),
            "application/json; charset=utf-8",
            "{accept}"
        );
        let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(json["active"], true);
        assert_eq!(json["tenant"], "acme");
    }

    // Another tenant's caller; it may not introspect shop-client's token itself.
    let partner = server
        .token_as(PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET, "orders:read")
        .await;
    let (_, p) = decode_jwt(&server.introspect(&partner, INTROSPECTION_JWT).await.body);
    assert_eq!(p["token_introspection"]["tenant"], "globex");

    // Revoked: still a signed answer, now inactive and nothing else.
    server.revoke(&token).await;
    let r = server.introspect(&token, INTROSPECTION_JWT).await;
    assert_eq!(
        r.content_type(),
        "application/token-introspection+jwt; charset=utf-8"
    );
    let (_, p) = decode_jwt(&r.body);
    assert_eq!(
        p["token_introspection"],
        serde_json::json!({ "active": false })
    );

    // Outage and recovery: tokens survive, the port and key stay.
    let token = server.token("orders:read").await;
    let (kid, port) = (server.kid(), server.port());
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    server.restart().await;
    assert_eq!((server.kid(), server.port()), (kid.clone(), port));
    let (_, p) = decode_jwt(&server.introspect(&token, INTROSPECTION_JWT).await.body);
    assert_eq!(p["token_introspection"]["active"], true);

    // Key rotation: the JWKS serves only the new kid, which signs new answers.
    assert_eq!(server.jwks().await["keys"][0]["kid"], kid.as_str());
    server.rotate_keys().await;
    let new_kid = server.kid();
    assert_ne!(new_kid, kid);
    let jwks = server.jwks().await;
    let kids: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    assert_eq!(kids, vec![serde_json::json!(new_kid)]);
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "JWKS has no private parts"
    );
    let (h, p) = decode_jwt(&server.introspect(&token, INTROSPECTION_JWT).await.body);
    assert_eq!(h["kid"], new_kid.as_str());
    assert_eq!(p["token_introspection"]["active"], true);
}

#[tokio::test]
async fn tokens_expire_after_the_ttl() {
    let server = OAuthServer::start(2).await;
    let token = server.token("orders:read").await;
    let (_, p) = decode_jwt(&server.introspect(&token, INTROSPECTION_JWT).await.body);
    let ti = &p["token_introspection"];
    assert_eq!(ti["active"], true);
    assert_eq!(ti["exp"].as_u64().unwrap() - ti["iat"].as_u64().unwrap(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (_, p) = decode_jwt(&server.introspect(&token, INTROSPECTION_JWT).await.body);
    assert_eq!(
        p["token_introspection"],
        serde_json::json!({ "active": false })
    );
}
