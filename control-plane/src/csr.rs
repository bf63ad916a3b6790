//! Decoding and checking PKCS#10 requests from workloads. A CSR contributes exactly one thing to
//! a certificate — its public key — and only after its self-signature proves possession.

use der::oid::AssociatedOid;
use der::{Decode, Encode};
use pqmesh_mtls::keys::csr_algorithms;
use pqmesh_mtls::KeyAlgorithm;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::{CertReq, ExtensionReq};

/// Larger than any honest CSR (an ML-DSA-65 one is ~5.5 KB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("CSR is empty")]
    Empty,
    #[error("CSR is {0} bytes, more than the {MAX_CSR_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("CSR is not a DER PKCS#10 CertificationRequest: {0}")]
    Malformed(String),
    #[error(
        "CSR requests subjectAltName(s) [{0}]; identities come only from the authenticated token"
    )]
    RequestsSans(String),
    #[error("unsupported key type {0}: supported are ecdsa-p256, ml-dsa-44, ml-dsa-65")]
    UnsupportedKey(String),
    #[error("CSR signature algorithm {got} does not match its {key} key")]
    SignatureAlgorithmMismatch { key: KeyAlgorithm, got: String },
    #[error("CSR signature does not verify (no proof of possession of the private key)")]
    BadSignature,
}

/// A CSR whose self-signature verified: the public key it certifies.
#[derive(Debug)]
pub struct VerifiedCsr {
    pub alg: KeyAlgorithm,
    /// The raw subjectPublicKey bits (EC point, or ML-DSA public key).
    pub public_key: Vec<u8>,
}

impl rcgen::PublicKeyData for VerifiedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg.rcgen()
    }
}

pub fn verify_csr(der_bytes: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der_bytes.is_empty() {
        return Err(CsrError::Empty);
    }
    if der_bytes.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(der_bytes.len()));
    }
    let csr = CertReq::from_der(der_bytes).map_err(|e| CsrError::Malformed(e.to_string()))?;
    refuse_requested_sans(&csr)?;

    let spki_alg = csr
        .info
        .public_key
        .algorithm
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let sig_alg = csr
        .algorithm
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let (alg, verifier) = csr_algorithms()
        .into_iter()
        .find(|(_, v)| wrap_sequence(&v.public_key_alg_id()) == spki_alg)
        .ok_or_else(|| CsrError::UnsupportedKey(describe_key(&csr)))?;
    if wrap_sequence(&verifier.signature_alg_id()) != sig_alg {
        return Err(CsrError::SignatureAlgorithmMismatch {
            key: alg,
            got: csr.algorithm.oid.to_string(),
        });
    }
    let public_key = csr
        .info
        .public_key
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("public key is not a whole number of bytes".into()))?
        .to_vec();
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("signature is not a whole number of bytes".into()))?;
    let message = csr
        .info
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    verifier
        .verify_signature(&public_key, &message, signature)
        .map_err(|_| CsrError::BadSignature)?;
    Ok(VerifiedCsr { alg, public_key })
}

fn refuse_requested_sans(csr: &CertReq) -> Result<(), CsrError> {
    let mut names = Vec::new();
    for attr in csr.info.attributes.iter() {
        if attr.oid != ExtensionReq::OID {
            continue;
        }
        for value in attr.values.iter() {
            let req: ExtensionReq = value
                .decode_as()
                .map_err(|e| CsrError::Malformed(format!("extensionRequest: {e}")))?;
            for ext in req.0.iter().filter(|e| e.extn_id == SubjectAltName::OID) {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| CsrError::Malformed(format!("subjectAltName: {e}")))?;
                names.extend(san.0.iter().map(describe_name));
                if san.0.is_empty() {
                    names.push("<empty>".to_owned());
                }
            }
        }
    }
    if names.is_empty() {
        Ok(())
    } else {
        Err(CsrError::RequestsSans(names.join(", ")))
    }
}

fn describe_name(name: &GeneralName) -> String {
    match name {
        GeneralName::UniformResourceIdentifier(u) => format!("URI:{}", u.as_str()),
        GeneralName::DnsName(d) => format!("DNS:{}", d.as_str()),
        GeneralName::Rfc822Name(e) => format!("email:{}", e.as_str()),
        GeneralName::IpAddress(ip) => format!("IP:{}", hex_bytes(ip.as_bytes())),
        _ => "other-name".to_owned(),
    }
}

fn describe_key(csr: &CertReq) -> String {
    let alg = &csr.info.public_key.algorithm;
    match alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
    {
        Some(curve) => format!("{} (parameters {curve})", alg.oid),
        None => alg.oid.to_string(),
    }
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// DER SEQUENCE around `contents` (webpki gives AlgorithmIdentifiers without the outer header).
fn wrap_sequence(contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = vec![0x30];
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(contents);
    out
}

#[cfg(test)]
#[path = "csr_tests.rs"]
mod tests;
