use super::*;

fn head(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn underscore_twins_of_any_header_are_refused() {
    for name in [
        "x_pqmesh_peer_identity",
        "X_PQMESH_PEER_IDENTITY",
        "x-pqmesh_peer-identity",
        "x_forwarded_for",
        "authorization_",
        "_",
    ] {
        let mut h = head(&[(name, "spiffe://cluster.local/ns/admin/sa/root")]);
        assert_eq!(
            canonicalize(&Method::GET, &mut h, false),
            Err(Refusal::Underscore(name.to_ascii_lowercase())),
            "{name}"
        );
    }
}

#[test]
fn the_client_cannot_remove_duplicate_or_shadow_the_identity_header() {
    let stamped = HeaderValue::from_static("spiffe://cluster.local/ns/shop/sa/web");
    let cases: &[&[(&str, &str)]] = &[
        &[("connection", "x-pqmesh-peer-identity")],
        &[("connection", "close, X-PQMESH-PEER-IDENTITY")],
        &[(
            "x-pqmesh-peer-identity",
            "spiffe://cluster.local/ns/admin/sa/root",
        )],
        &[
            ("x-pqmesh-peer-identity", "spiffe://a"),
            ("x-pqmesh-peer-identity", "spiffe://b"),
        ],
        &[("x-pqmesh-anything", "1"), ("connection", "keep-alive")],
    ];
    for pairs in cases {
        let mut h = head(pairs);
        canonicalize(&Method::GET, &mut h, false).unwrap();
        stamp_identity(&mut h, Some(&stamped));
        let got: Vec<_> = h
            .get_all(crate::http_proxy::PEER_IDENTITY_HEADER)
            .iter()
            .collect();
        assert_eq!(got, [&stamped], "{pairs:?}");
        assert!(
            h.keys().all(|k| !k.as_str().starts_with(RESERVED_PREFIX)
                || k == crate::http_proxy::PEER_IDENTITY_HEADER),
            "{pairs:?}"
        );
        // Plaintext (no verified caller): no identity header at all.
        let mut h = head(pairs);
        canonicalize(&Method::GET, &mut h, false).unwrap();
        stamp_identity(&mut h, None);
        assert!(
            h.keys().all(|k| !k.as_str().starts_with(RESERVED_PREFIX)),
            "{pairs:?}"
        );
    }
}

#[test]
fn hop_by_hop_and_connection_named_headers_go_before_the_policy_sees_them() {
    let mut h = head(&[
        ("connection", "authorization, x-custom"),
        ("authorization", "Bearer abc"),
        ("x-custom", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("x-kept", "yes"),
    ]);
    assert_eq!(canonicalize(&Method::GET, &mut h, false), Ok(Upgrade::None));
    let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
}

#[test]
fn only_websocket_upgrades_are_forwarded() {
    let ws = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut h = head(&ws);
    assert_eq!(
        canonicalize(&Method::GET, &mut h, false),
        Ok(Upgrade::WebSocket)
    );
    assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
    assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
    // Not on HTTP/2, not for another method.
    assert_eq!(
        canonicalize(&Method::GET, &mut head(&ws), true),
        Ok(Upgrade::None)
    );
    assert_eq!(
        canonicalize(&Method::POST, &mut head(&ws), false),
        Ok(Upgrade::None)
    );
    for pairs in [
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ][..],
        &[("connection", "upgrade"), ("upgrade", "h2c, tls/1.3")],
        &[("connection", "upgrade"), ("upgrade", "websocket2")],
        &[("upgrade", "websocket")],
        &[("connection", "upgrade")],
    ] {
        let mut h = head(pairs);
        assert_eq!(
            canonicalize(&Method::GET, &mut h, false),
            Ok(Upgrade::None),
            "{pairs:?}"
        );
        assert!(h.is_empty(), "{pairs:?} left {h:?}");
    }
    // No key, or two: not a WebSocket handshake.
    let no_key = [("connection", "upgrade"), ("upgrade", "websocket")];
    assert_eq!(
        canonicalize(&Method::GET, &mut head(&no_key), false),
        Ok(Upgrade::None)
    );
    let two_keys = [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "a"),
        ("sec-websocket-key", "b"),
    ];
    assert_eq!(
        canonicalize(&Method::GET, &mut head(&two_keys), false),
        Ok(Upgrade::None)
    );
}

#[test]
fn a_switch_needs_the_apps_websocket_accept() {
    // RFC 6455 §1.3's example.
    let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
    let good = head(&[
        ("upgrade", "websocket"),
        ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]);
    assert!(websocket_accepted(Some(&key), &good));
    for bad in [
        head(&[("upgrade", "websocket")]),
        head(&[("upgrade", "websocket"), ("sec-websocket-accept", "wrong")]),
        head(&[
            ("upgrade", "h2c"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]),
        head(&[]),
    ] {
        assert!(!websocket_accepted(Some(&key), &bad), "{bad:?}");
    }
    assert!(!websocket_accepted(None, &good));
}

#[test]
fn connect_and_method_overrides_are_refused() {
    assert_eq!(
        canonicalize(&Method::CONNECT, &mut HeaderMap::new(), false),
        Err(Refusal::Connect)
    );
    for name in [
        "X-HTTP-Method-Override",
        "x-http-method",
        "X-Method-Override",
    ] {
        let mut h = head(&[(name, "DELETE")]);
        assert_eq!(
            canonicalize(&Method::GET, &mut h, false),
            Err(Refusal::MethodOverride(name.to_ascii_lowercase())),
        );
    }
    for name in ["X-Original-URL", "x-rewrite-url", "X-Original-Method"] {
        let mut h = head(&[(name, "/admin")]);
        assert_eq!(
            canonicalize(&Method::GET, &mut h, false),
            Err(Refusal::UrlOverride(name.to_ascii_lowercase())),
        );
    }
}

/// Outside review 10, F5: `delete` reached a Werkzeug app as DELETE after a rule for `DELETE`
/// did not match it.
#[test]
fn methods_not_in_upper_case_are_refused() {
    for m in ["delete", "Delete", "gEt", "pOST", "x"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let refusal = canonicalize(&method, &mut HeaderMap::new(), false).unwrap_err();
        assert_eq!(refusal, Refusal::Method(m.to_owned()));
        assert_eq!(refusal.status(), hyper::StatusCode::BAD_REQUEST);
        assert_eq!(refusal.outcome(), "bad_method");
    }
    for m in ["GET", "DELETE", "PROPFIND", "VERSION-CONTROL", "M_SEARCH2"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        assert!(
            canonicalize(&method, &mut HeaderMap::new(), false).is_ok(),
            "{m}"
        );
    }
}
