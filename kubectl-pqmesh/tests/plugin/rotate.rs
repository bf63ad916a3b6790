//! `kubectl pqmesh rotate-root` through the stand-in kubectl: each step reads the CA Secret,
//! writes it back changed (at the resourceVersion it read), in the order the control plane's
//! local rotation enforces; every intermediate Secret is one the control plane loads; the
//! user-provided CA, steps out of order and a concurrent change are refused and write nothing.

use super::support::*;
use base64::Engine;
use pqmesh_control_plane::ca::CertificateAuthority;
use pqmesh_control_plane::kubernetes::ca_secret::roots_of;
use pqmesh_tests::*;
use serde_json::{json, Value};

fn secret(pairs: &[(&str, &str)]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64.encode(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "pqmesh-ca", "namespace": "pqmesh-system", "resourceVersion": "4711",
                        "managedFields": [{"manager": "pqmesh-control-plane"}]},
           "data": data})
}

fn text(secret: &Value, key: &str) -> Option<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    secret["data"][key]
        .as_str()
        .map(|v| String::from_utf8(b64.decode(v).unwrap()).unwrap())
}

/// The control plane would load this Secret: (signing root PEM, number of trusted roots).
fn loads(secret: &Value) -> (String, usize) {
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(secret.clone()).unwrap();
    let roots = roots_of(&secret, false, "pqmesh-system", "pqmesh-ca").unwrap();
    let ca = CertificateAuthority::from_roots(
        &roots,
        TRUST_DOMAIN,
        std::time::Duration::from_secs(3600),
    )
    .expect("the control plane accepts the rotated Secret");
    (roots.signing_cert_pem, ca.bundle().roots().len())
}

struct Fake {
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl Fake {
    fn new(secret: &Value) -> Self {
        let dir = TempDir::new("rotate");
        let kubectl = install_fake_kubectl(dir.path());
        std::fs::write(dir.path().join("secret.json"), secret.to_string()).unwrap();
        let env = vec![
            ("FAKE_DIR".into(), dir.path().display().to_string()),
            ("PQMESH_KUBECTL".into(), kubectl.display().to_string()),
        ];
        Self { dir, env }
    }

    async fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend_from_slice(extra);
        plugin(args, &env).await
    }

    /// What `kubectl replace` received, which then becomes the Secret (as the API server would).
    fn take_replaced(&self) -> Option<Value> {
        let path = self.dir.path().join("replaced.json");
        let text = std::fs::read_to_string(&path).ok()?;
        std::fs::remove_file(&path).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        std::fs::write(self.dir.path().join("secret.json"), &text).unwrap();
        Some(v)
    }
}

#[tokio::test]
async fn three_steps_rotate_the_ca_secret_to_ml_dsa() {
    let (old_cert, old_key) =
        pqmesh_control_plane::ca::create_root(TRUST_DOMAIN, pqmesh_mtls::KeyAlgorithm::EcdsaP256)
            .unwrap();
    let fake = Fake::new(&secret(&[
        ("ca.crt", &old_cert),
        ("ca.key", &old_key),
        ("extra-trusted-roots.pem", &old_cert),
    ]));

    // Out of order: nothing staged to activate or finish.
    for step in ["activate", "finish"] {
        let run = fake.run(&["rotate-root", step], &[]).await;
        assert_eq!(run.code, 1, "{step}: {}", run.stderr);
        assert!(fake.take_replaced().is_none(), "{step} wrote the Secret");
    }

    let run = fake
        .run(&["rotate-root", "prepare", "--alg", "ml-dsa-65"], &[])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("kubectl pqmesh check"),
        "{}",
        run.stdout
    );
    let prepared = fake.take_replaced().expect("prepare wrote the Secret");
    assert_eq!(
        prepared["metadata"]["resourceVersion"], "4711",
        "written at the version read"
    );
    assert!(prepared["metadata"].get("managedFields").is_none());
    assert_eq!(
        text(&prepared, "ca.crt").as_deref(),
        Some(old_cert.as_str())
    );
    assert!(
        text(&prepared, "extra-trusted-roots.pem").is_some(),
        "other keys are kept"
    );
    let new_cert = text(&prepared, "next-root-cert.pem").expect("next root staged");
    assert!(text(&prepared, "next-root-key.pem")
        .unwrap()
        .contains("PRIVATE KEY"));
    assert_eq!(
        loads(&prepared),
        (old_cert.clone(), 2),
        "old signs, both trusted"
    );

    let run = fake.run(&["rotate-root", "prepare"], &[]).await;
    assert_eq!(run.code, 1, "a second prepare is refused: {}", run.stdout);
    assert!(fake.take_replaced().is_none());

    let run = fake.run(&["rotate-root", "activate"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let activated = fake.take_replaced().unwrap();
    assert_eq!(
        text(&activated, "ca.crt").as_deref(),
        Some(new_cert.as_str())
    );
    assert_eq!(
        text(&activated, "previous-root-cert.pem").as_deref(),
        Some(old_cert.as_str())
    );
    assert!(
        text(&activated, "next-root-cert.pem").is_none()
            && text(&activated, "next-root-key.pem").is_none()
    );
    assert_eq!(
        loads(&activated),
        (new_cert.clone(), 2),
        "new signs, old still trusted"
    );

    let run = fake
        .run(&["rotate-root", "finish"], &[("FAKE_CONFLICT", "1")])
        .await;
    assert_eq!(run.code, 1, "a concurrent change is reported");
    assert!(
        run.stderr.contains("Conflict") && run.stderr.contains("run the step again"),
        "{}",
        run.stderr
    );
    let run = fake.run(&["rotate-root", "finish"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let finished = fake.take_replaced().unwrap();
    assert!(text(&finished, "previous-root-cert.pem").is_none());
    assert_eq!(loads(&finished).0, new_cert);
    assert!(fake.take_replaced().is_none());
}

#[tokio::test]
async fn a_user_provided_ca_is_not_rotated_by_pqmesh() {
    let (cert, key) =
        pqmesh_control_plane::ca::create_root(TRUST_DOMAIN, pqmesh_mtls::KeyAlgorithm::EcdsaP256)
            .unwrap();
    let fake = Fake::new(&secret(&[
        ("tls.crt", &cert),
        ("tls.key", &key),
        ("ca.crt", &cert),
    ]));
    let run = fake.run(&["rotate-root", "prepare"], &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("user-provided"), "{}", run.stderr);
    assert!(fake.take_replaced().is_none());
}
