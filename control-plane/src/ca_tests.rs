use super::*;
use crate::csr::verify_csr;
use pqmesh_mtls::keys::workload_csr;
use std::os::unix::fs::PermissionsExt;

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pqmesh-ca-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn id() -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", "web").unwrap()
}

#[test]
fn creates_root_with_private_key_0600_and_reloads_it() {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::MlDsa65] {
        let dir = tempdir();
        let paths = CaPaths::in_dir(&dir);
        let ca = CertificateAuthority::load_or_create(
            &paths,
            "cluster.local",
            alg,
            Duration::from_secs(3600),
        )
        .unwrap();
        let mode = fs::metadata(&paths.root_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = CertificateAuthority::load_or_create(
            &paths,
            "cluster.local",
            alg,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(
            ca.root_der(),
            again.root_der(),
            "the existing {alg} root is reused"
        );
        // The reloaded key still signs leaves that chain to the root.
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = verify_csr(&workload_csr(&key).unwrap()).unwrap();
        let leaf = again.issue(&csr, &id()).unwrap();
        pqmesh_mtls::Credentials::verified(
            leaf.chain,
            key.serialize_der(),
            again.bundle().clone(),
            &id(),
        )
        .unwrap();
    }
}

#[test]
fn refuses_a_world_readable_key() {
    let dir = tempdir();
    let paths = CaPaths::in_dir(&dir);
    CertificateAuthority::load_or_create(
        &paths,
        "cluster.local",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(3600),
    )
    .unwrap();
    fs::set_permissions(&paths.root_key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = CertificateAuthority::load_or_create(
        &paths,
        "cluster.local",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(3600),
    )
    .err()
    .unwrap();
    assert!(matches!(err, CaError::KeyPermissions { .. }), "{err}");
}

#[test]
fn refuses_a_corrupt_root() {
    let dir = tempdir();
    let paths = CaPaths::in_dir(&dir);
    CertificateAuthority::load_or_create(
        &paths,
        "cluster.local",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(3600),
    )
    .unwrap();
    fs::write(
        &paths.root_cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = CertificateAuthority::load_or_create(
        &paths,
        "cluster.local",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(3600),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("root-cert.pem"), "{err}");
}

#[test]
fn issues_leaves_whose_only_san_is_the_spiffe_id() {
    for root_alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::MlDsa65] {
        let dir = tempdir();
        let ca = CertificateAuthority::load_or_create(
            &CaPaths::in_dir(&dir),
            "cluster.local",
            root_alg,
            Duration::from_secs(600),
        )
        .unwrap();
        for leaf_alg in KeyAlgorithm::all() {
            let key = leaf_alg.generate().unwrap();
            let csr = verify_csr(&workload_csr(&key).unwrap()).unwrap();
            let leaf = ca.issue(&csr, &id()).unwrap();
            let creds = pqmesh_mtls::Credentials::verified(
                leaf.chain.clone(),
                key.serialize_der(),
                ca.bundle().clone(),
                &id(),
            )
            .unwrap_or_else(|e| panic!("root {root_alg} leaf {leaf_alg}: {e}"));
            let lifetime = creds.not_after.duration_since(creds.not_before).unwrap();
            assert!(
                lifetime >= Duration::from_secs(600) && lifetime <= Duration::from_secs(600 + 61),
                "{lifetime:?}"
            );
            let cert = <x509_cert::Certificate as der::Decode>::from_der(&leaf.chain[0]).unwrap();
            let sans: Vec<_> = cert
                .tbs_certificate
                .extensions
                .iter()
                .flatten()
                .filter(|e| e.extn_id == der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
                .collect();
            assert_eq!(sans.len(), 1);
            let names = <x509_cert::ext::pkix::SubjectAltName as der::Decode>::from_der(
                sans[0].extn_value.as_bytes(),
            )
            .unwrap();
            assert_eq!(names.0.len(), 1, "exactly one SAN");
        }
    }
}
