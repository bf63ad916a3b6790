//! Adversarial suite, HTTP layer (continued): phantom-token abuse (revoked-token replay within
//! the cache bound, another client's token, the forwarded JWT replayed, a flood of random opaque
//! tokens against the introspection budget), smuggling of the peer-identity header, and
//! path-normalisation tricks against path rules. Same mesh and table as `adversarial`.

use std::net::SocketAddr;
use std::time::Duration;

use pqmesh_tests::oauth::{self, OAuthServer};
use pqmesh_tests::report::Table;
use pqmesh_tests::*;

use crate::adversarial::{bearer, mesh, raw, CACHE_TTL};

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn phantom_token_identity_header_and_path_table() {
    let m = mesh(300).await;
    let mut t = Table::new("adversarial-phantom-header-path");
    let read = m.oauth.token("orders:read").await;
    m.case(
        &mut t,
        "control: opaque token (orders:read)",
        "/orders/1",
        bearer(&read),
        200,
    )
    .await;

    // Phantom-token abuse.
    m.case(
        &mut t,
        "random opaque token",
        "/orders/1",
        bearer("e3b0c44298fc1c149afbf4c8996fb924"),
        401,
    )
    .await;
    let revoked_first = m.oauth.token("orders:read").await;
    m.oauth.revoke(&revoked_first).await;
    m.case(
        &mut t,
        "opaque token revoked before first use",
        "/orders/1",
        bearer(&revoked_first),
        401,
    )
    .await;
    let replayed = m.oauth.token("orders:read").await;
    m.case(
        &mut t,
        "opaque token, first use",
        "/orders/1",
        bearer(&replayed),
        200,
    )
    .await;
    m.oauth.revoke(&replayed).await;
    let revoked_at = std::time::Instant::now();
    m.case(&mut t, &format!("same token revoked, replayed within the cache window (bound: maxTtlSeconds {CACHE_TTL} s)"), "/orders/1", bearer(&replayed), 200).await;
    tokio::time::sleep(Duration::from_secs(CACHE_TTL) + Duration::from_millis(200)).await;
    m.case(
        &mut t,
        &format!(
            "same token replayed after the window ({:.1} s after revocation)",
            revoked_at.elapsed().as_secs_f64()
        ),
        "/orders/1",
        bearer(&replayed),
        401,
    )
    .await;
    let partner = m
        .oauth
        .token_as(
            oauth::PARTNER_CLIENT_ID,
            oauth::PARTNER_CLIENT_SECRET,
            "orders:read",
        )
        .await;
    m.case(
        &mut t,
        "another client's token on a scope it lacks (/admin/x)",
        "/admin/x",
        bearer(&partner),
        403,
    )
    .await;
    // The JWT a sidecar forwarded to an app, replayed by that app against a path it does not cover.
    let body = m
        .case(
            &mut t,
            "control: phantom token on /orders/2",
            "/orders/2",
            bearer(&read),
            200,
        )
        .await;
    let jwt = body
        .split("authorization=Bearer ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .expect("the app got the JWT");
    m.case(
        &mut t,
        "forwarded JWT replayed on /admin/x",
        "/admin/x",
        bearer(&jwt),
        403,
    )
    .await;

    // Random opaque tokens: never cached, so they spend the sidecar's inactive-answer budget.
    let introspections = |o: &OAuthServer| {
        o.log()
            .lines()
            .filter(|l| l.contains("/token/introspection"))
            .count()
    };
    let before_calls = introspections(&m.oauth);
    let before_app = m.reached();
    let flood_started = std::time::Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let out = m.a.outbound_addr.unwrap();
    let answers = futures_join(out, 300).await;
    for s in answers {
        *statuses.entry(s).or_default() += 1;
    }
    let calls = introspections(&m.oauth) - before_calls;
    let bound = 100 + (flood_started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    let only_refusals = statuses.keys().all(|s| *s == 401 || *s == 503);
    let n401 = statuses.get(&401).copied().unwrap_or(0);
    let n503 = statuses.get(&503).copied().unwrap_or(0);
    t.deny(
        &format!("300 random opaque tokens: {n401}×401, {n503}×503, {calls} introspections sent (bound 100 + 10/s)"),
        format!("only 401/503, calls <= {bound}"),
        if only_refusals && calls <= bound {
            format!("only 401/503, calls <= {bound}")
        } else {
            format!("{statuses:?}, {calls} calls")
        },
        m.reached() - before_app,
    );
    println!("flood: {statuses:?}, {calls} introspection calls (bound {bound})");

    // The peer-identity header is the sidecar's statement only.
    let spoof = format!("spiffe://{TRUST_DOMAIN}/ns/kube-system/sa/admin");
    let body = m
        .case(
            &mut t,
            "x-pqmesh-peer-identity: kube-system/admin from A",
            "/orders/1",
            vec![
                ("authorization", format!("Bearer {read}")),
                ("x-pqmesh-peer-identity", spoof.clone()),
            ],
            200,
        )
        .await;
    t.allow(
        "  app saw only A's verified identity",
        format!("peer={}", spiffe("web")),
        peer_of(&body),
        0,
        0,
    );
    let body = m
        .case(
            &mut t,
            "two copies, mixed case (X-PQMESH-Peer-Identity)",
            "/orders/1",
            vec![
                ("authorization", format!("Bearer {read}")),
                ("X-PQMESH-Peer-Identity", spoof.clone()),
                ("x-pqmesh-peer-identity", spiffe("web")),
            ],
            200,
        )
        .await;
    t.allow(
        "  app saw only A's verified identity",
        format!("peer={}", spiffe("web")),
        peer_of(&body),
        0,
        0,
    );
    let before = m.reached();
    let (status, _) = raw(
        m.c.outbound_addr.unwrap(),
        "GET",
        "/orders/1",
        &[
            ("authorization", format!("Bearer {read}")),
            ("x-pqmesh-peer-identity", spiffe("web")),
        ],
    )
    .await;
    t.deny(
        "intruder (shop/intruder) claiming shop/web in the header",
        403,
        status,
        m.reached() - before,
    );

    // Path normalisation: an orders:read token must never reach an /admin rule's app path.
    let paths: &[(&str, &str, u16)] = &[
        ("..", "/orders/../admin/x", 403),
        ("%2e%2e", "/orders/%2e%2e/admin/x", 403),
        ("%2E%2E", "/orders/%2E%2E/admin/x", 403),
        ("// prefix", "//admin/x", 403),
        ("//.. inside", "/orders//../admin/x", 403),
        ("encoded slash ..%2f", "/orders/..%2fadmin/x", 400),
        ("encoded slash %2F", "/orders%2F..%2Fadmin/x", 400),
        ("encoded backslash %5c", "/orders/..%5cadmin/x", 400),
        ("percent-encoded unreserved %61dmin", "/%61dmin/x", 403),
        (
            "case: /ADMIN/x (no rule; paths are case-sensitive)",
            "/ADMIN/x",
            403,
        ),
        ("trailing dot segment /admin/.", "/admin/.", 403),
        ("trailing dots /admin./x (no rule)", "/admin./x", 403),
        (
            "dot segments above the root (refused)",
            "/../../admin/x",
            400,
        ),
    ];
    for (name, path, expected) in paths {
        m.case(
            &mut t,
            &format!("path {name}: {path}"),
            path,
            bearer(&read),
            *expected,
        )
        .await;
    }
    let body = m
        .case(
            &mut t,
            "control: path /orders/./a/../1",
            "/orders/./a/../1",
            bearer(&read),
            200,
        )
        .await;
    t.allow(
        "  app received the normalised path",
        "path=/orders/1",
        body.split_whitespace()
            .find(|w| w.starts_with("path="))
            .unwrap_or("none"),
        0,
        0,
    );
    t.check();
    let _ = (&m.cp, &m.b);
}

fn peer_of(body: &str) -> String {
    body.split_whitespace()
        .find(|w| w.starts_with("peer="))
        .unwrap_or("peer=?")
        .to_owned()
}

/// `n` requests with random opaque tokens, 20 at a time; their statuses.
async fn futures_join(out: SocketAddr, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|_| {
                let token = format!("{:032x}", rand::random::<u128>());
                tokio::spawn(async move { raw(out, "GET", "/orders/1", &bearer(&token)).await.0 })
            })
            .collect();
        for task in tasks {
            statuses.push(task.await.unwrap_or(0));
        }
    }
    statuses
}
