use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use pqmesh_mtls::KeyAlgorithm;
use rustls::pki_types::CertificateDer;

use super::{ca_bundle_apply, ca_bundle_for, root_is_ecdsa};

fn root(alg: KeyAlgorithm) -> CertificateDer<'static> {
    let (cert, _key) = crate::ca::create_root("cluster.local", alg).unwrap();
    pqmesh_mtls::x509::certs_from_pem(&cert).unwrap().remove(0)
}

fn configuration(ca_bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
    use base64::Engine;
    let webhooks: Vec<serde_json::Value> = ca_bundles
        .iter()
        .enumerate()
        .map(|(i, pem)| {
            let mut client_config = serde_json::json!({"service": {"name": "pqmesh", "namespace": "pqmesh-system"}});
            if let Some(pem) = pem {
                client_config["caBundle"] =
                    serde_json::json!(base64::engine::general_purpose::STANDARD.encode(pem));
            }
            serde_json::json!({"name": format!("inject{i}.pqmesh.io"), "admissionReviewVersions": ["v1"],
                               "sideEffects": "None", "clientConfig": client_config})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "pqmesh", "resourceVersion": "41"}, "webhooks": webhooks}))
    .unwrap()
}

#[test]
fn the_ca_bundle_holds_every_trusted_root_that_can_sign_the_webhook() {
    let (old, new) = (root(KeyAlgorithm::EcdsaP256), root(KeyAlgorithm::EcdsaP256));
    let (ml_dsa, webhook) = (root(KeyAlgorithm::MlDsa65), root(KeyAlgorithm::EcdsaP256));
    assert!(root_is_ecdsa(&old) && !root_is_ecdsa(&ml_dsa));
    // ECDSA -> ECDSA: both while both are trusted, in the trust bundle's order.
    assert_eq!(
        ca_bundle_for(&[new.clone(), old.clone()], Some(&webhook)),
        vec![new.clone(), old.clone()]
    );
    assert_eq!(
        ca_bundle_for(std::slice::from_ref(&new), None),
        vec![new.clone()]
    );
    // ECDSA -> ML-DSA: the ML-DSA root stands for the ECDSA webhook CA.
    assert_eq!(
        ca_bundle_for(&[old.clone(), ml_dsa.clone()], Some(&webhook)),
        vec![old.clone(), webhook.clone()]
    );
    assert_eq!(
        ca_bundle_for(&[ml_dsa.clone(), old.clone()], Some(&webhook)),
        vec![webhook.clone(), old.clone()]
    );
    // After `finish`: one root. Duplicates collapse.
    assert_eq!(
        ca_bundle_for(&[ml_dsa.clone(), ml_dsa.clone()], Some(&webhook)),
        vec![webhook.clone()]
    );
    // An ML-DSA root is never put in the caBundle (the API server cannot use it).
    assert!(ca_bundle_for(&[ml_dsa], None).is_empty());
}

#[test]
fn the_ca_bundle_is_written_only_when_it_differs_and_at_the_version_read() {
    let (old, new) = (root(KeyAlgorithm::EcdsaP256), root(KeyAlgorithm::EcdsaP256));
    let pem = |certs: &[CertificateDer<'static>]| pqmesh_mtls::x509::certs_to_pem(certs);
    let both = pem(&[old.clone(), new.clone()]);
    let reversed = pem(&[new.clone(), old.clone()]);
    let wanted = [old.clone(), new.clone()];
    // In place (in any order, in every webhook): nothing to write.
    assert!(ca_bundle_apply(&configuration(&[Some(&both), Some(&reversed)]), &wanted).is_none());
    // Anything else is rewritten, every webhook, at the resourceVersion read.
    let only_old = pem(std::slice::from_ref(&old));
    let with_extra = pem(&[old.clone(), new.clone(), root(KeyAlgorithm::EcdsaP256)]);
    for stored in [
        vec![None],
        vec![Some("")],
        vec![Some("not PEM")],
        vec![Some(only_old.as_str())],
        vec![Some(with_extra.as_str())],
        vec![Some(both.as_str()), Some(only_old.as_str())],
    ] {
        let patch = ca_bundle_apply(&configuration(&stored), &wanted)
            .unwrap_or_else(|| panic!("{stored:?} must be rewritten"));
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        assert_eq!(patch["metadata"]["name"], "pqmesh");
        let webhooks = patch["webhooks"].as_array().unwrap();
        assert_eq!(webhooks.len(), stored.len(), "every webhook is applied");
        for w in webhooks {
            use base64::Engine;
            let written = base64::engine::general_purpose::STANDARD
                .decode(w["clientConfig"]["caBundle"].as_str().unwrap())
                .unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), both);
        }
    }
}
