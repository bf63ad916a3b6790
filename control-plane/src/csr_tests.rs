use super::*;
use pqmesh_mtls::keys::workload_csr;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

fn csr_with_sans(key: &KeyPair, sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().der().to_vec()
}

#[test]
fn accepts_each_supported_key_type() {
    for alg in KeyAlgorithm::all() {
        let key = alg.generate().unwrap();
        let csr = workload_csr(&key).unwrap();
        let verified = verify_csr(&csr).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(verified.alg, alg);
        assert_eq!(verified.public_key, key.public_key_raw());
    }
}

#[test]
fn refuses_bad_inputs_with_precise_errors() {
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let good = workload_csr(&key).unwrap();

    let mut flipped_sig = good.clone();
    let last = flipped_sig.len() - 3;
    flipped_sig[last] ^= 0x01;

    let mut trailing = good.clone();
    trailing.push(0);

    let other_key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    // Take the signed request of key A and swap in key B's public key: the signature no longer
    // matches (this is exactly "CSR for a key you don't hold").
    let mut swapped = good.clone();
    let a = key.public_key_raw().to_vec();
    let b = other_key.public_key_raw().to_vec();
    let pos = swapped
        .windows(a.len())
        .position(|w| w == a.as_slice())
        .unwrap();
    swapped[pos..pos + a.len()].copy_from_slice(&b);

    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();

    let uri = SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    );
    let dns = SanType::DnsName("evil.example".try_into().unwrap());

    type Expect = fn(&CsrError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("empty", vec![], |e| matches!(e, CsrError::Empty)),
        ("garbage", b"hello, I am a CSR".to_vec(), |e| {
            matches!(e, CsrError::Malformed(_))
        }),
        ("truncated", good[..good.len() / 2].to_vec(), |e| {
            matches!(e, CsrError::Malformed(_))
        }),
        ("trailing byte", trailing, |e| {
            matches!(e, CsrError::Malformed(_))
        }),
        ("oversized", vec![0x30; MAX_CSR_BYTES + 1], |e| {
            matches!(e, CsrError::TooLarge(_))
        }),
        ("flipped signature bit", flipped_sig, |e| {
            matches!(e, CsrError::BadSignature)
        }),
        ("public key swapped", swapped, |e| {
            matches!(e, CsrError::BadSignature)
        }),
        ("p-384 key", workload_csr(&p384).unwrap(), |e| {
            matches!(e, CsrError::UnsupportedKey(_))
        }),
        ("ed25519 key", workload_csr(&ed25519).unwrap(), |e| {
            matches!(e, CsrError::UnsupportedKey(_))
        }),
        (
            "URI SAN for another identity",
            csr_with_sans(&key, vec![uri]),
            |e| matches!(e, CsrError::RequestsSans(s) if s.contains("kube-system")),
        ),
        (
            "DNS SAN",
            csr_with_sans(&key, vec![dns]),
            |e| matches!(e, CsrError::RequestsSans(s) if s.contains("evil.example")),
        ),
    ];
    for (name, input, expected) in cases {
        match verify_csr(&input) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => assert!(expected(&e), "{name}: unexpected error {e}"),
        }
    }
}

#[test]
fn error_messages_name_the_problem() {
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let err = verify_csr(&workload_csr(&p384).unwrap()).unwrap_err();
    assert!(err.to_string().contains("1.3.132.0.34"), "{err}");
}
