//! Workload key pairs and certificate signing requests. Keys are generated in memory by the
//! process that uses them and never serialized to disk by this module.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};

/// Signature algorithm of a key pair (and so of the certificates it signs or is named in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    MlDsa44,
    MlDsa65,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown key algorithm {0:?}: expected one of ecdsa-p256, ml-dsa-44, ml-dsa-65")]
    UnknownAlgorithm(String),
    #[error("generating a {alg} key pair failed: {source}")]
    Generate {
        alg: KeyAlgorithm,
        source: rcgen::Error,
    },
    #[error("building the certificate signing request failed: {0}")]
    Csr(rcgen::Error),
}

impl KeyAlgorithm {
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::MlDsa44 => &rcgen::PKCS_ML_DSA_44,
            KeyAlgorithm::MlDsa65 => &rcgen::PKCS_ML_DSA_65,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::MlDsa44 => "ml-dsa-44",
            KeyAlgorithm::MlDsa65 => "ml-dsa-65",
        }
    }

    pub fn all() -> [KeyAlgorithm; 3] {
        [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::MlDsa44,
            KeyAlgorithm::MlDsa65,
        ]
    }

    /// Generates a fresh key pair of this algorithm.
    pub fn generate(self) -> Result<KeyPair, KeyError> {
        KeyPair::generate_for(self.rcgen())
            .map_err(|source| KeyError::Generate { alg: self, source })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyAlgorithm::all()
            .into_iter()
            .find(|alg| alg.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KeyError::UnknownAlgorithm(s.to_owned()))
    }
}

/// A CSR for a workload key: no subject beyond a fixed CN and no SANs — the CA takes the
/// identity from the authenticated token, never from the request.
pub fn workload_csr(key: &KeyPair) -> Result<Vec<u8>, KeyError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(key).map_err(KeyError::Csr)?;
    Ok(csr.der().to_vec())
}

/// The signature verification algorithm of each key type the CA accepts in a CSR
/// (the CSR's self-signature uses the key's own algorithm).
pub fn csr_algorithms() -> [(
    KeyAlgorithm,
    &'static dyn rustls_pki_types::SignatureVerificationAlgorithm,
); 3] {
    use webpki::aws_lc_rs as algs;
    [
        (KeyAlgorithm::EcdsaP256, algs::ECDSA_P256_SHA256),
        (KeyAlgorithm::MlDsa44, algs::ML_DSA_44),
        (KeyAlgorithm::MlDsa65, algs::ML_DSA_65),
    ]
}
