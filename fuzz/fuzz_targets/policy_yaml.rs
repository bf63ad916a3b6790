//! Policy documents (local files or CRD objects): parse, validate, compile, evaluate.
#![no_main]
use std::collections::BTreeMap;

struct NoSecrets;
impl pqmesh_policy::Secrets for NoSecrets {
    fn get(&self, _: &str, _: &str, _: &str) -> Option<String> {
        Some("s".into())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(docs) = pqmesh_policy::parse_documents(text, "fuzz.yaml") else { return };
    let Ok(set) = pqmesh_policy::PolicySet::build(docs, "cluster.local") else { return };
    let workload = pqmesh_policy::Workload {
        namespace: "shop".into(),
        labels: BTreeMap::from([("app".to_owned(), "orders".to_owned())]),
    };
    if let Ok(compiled) = set.compile(&workload, &NoSecrets) {
        let json = serde_json::to_vec(&compiled).unwrap();
        let back: pqmesh_policy::WorkloadPolicy = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.version(), compiled.version());
        let id: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let _ = compiled.evaluate(&pqmesh_policy::Request {
            port: 8080,
            peer: Some(&id),
            trust_domain: "cluster.local",
            http: Some(pqmesh_policy::HttpRequest { method: "GET", path: "/orders/1", token: pqmesh_policy::TokenState::Absent }),
        });
    }
});
