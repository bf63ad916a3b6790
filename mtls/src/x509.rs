//! Reading the fields pqmesh cares about out of DER certificates: the SPIFFE ID in the URI SAN,
//! validity, serial. Parsing is strict: a certificate with zero or several SPIFFE URIs has no identity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::oid::AssociatedOid;
use der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use crate::spiffe::{SpiffeId, SpiffeIdError};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate is not valid DER X.509: {0}")]
    Der(der::Error),
    #[error("certificate has no SPIFFE ID in its URI SAN")]
    NoSpiffeId,
    #[error("certificate has {0} SPIFFE IDs; exactly one is required")]
    SeveralSpiffeIds(usize),
    #[error("certificate's SPIFFE ID is malformed: {0}")]
    BadSpiffeId(SpiffeIdError),
}

/// Summary of a certificate for logs, admin and metrics.
#[derive(Clone, Debug)]
pub struct CertSummary {
    pub spiffe_id: Option<SpiffeId>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial_hex: String,
}

fn parse(der_bytes: &[u8]) -> Result<Certificate, CertError> {
    Certificate::from_der(der_bytes).map_err(CertError::Der)
}

/// The single SPIFFE ID of a certificate.
pub fn spiffe_id(cert_der: &[u8]) -> Result<SpiffeId, CertError> {
    spiffe_id_of(&parse(cert_der)?)
}

fn spiffe_id_of(cert: &Certificate) -> Result<SpiffeId, CertError> {
    let mut uris = Vec::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id != SubjectAltName::OID {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(CertError::Der)?;
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                if uri.as_str().starts_with("spiffe://") {
                    uris.push(uri.as_str().to_owned());
                }
            }
        }
    }
    match uris.as_slice() {
        [] => Err(CertError::NoSpiffeId),
        [one] => one.parse().map_err(CertError::BadSpiffeId),
        several => Err(CertError::SeveralSpiffeIds(several.len())),
    }
}

pub fn summary(cert_der: &[u8]) -> Result<CertSummary, CertError> {
    let cert = parse(cert_der)?;
    let validity = &cert.tbs_certificate.validity;
    Ok(CertSummary {
        spiffe_id: spiffe_id_of(&cert).ok(),
        not_before: validity.not_before.to_system_time(),
        not_after: validity.not_after.to_system_time(),
        serial_hex: hex_upper(cert.tbs_certificate.serial_number.as_bytes()),
    })
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Parses all CERTIFICATE blocks of a PEM file.
pub fn certs_from_pem(
    pem_text: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    let blocks = pem::parse_many(pem_text).map_err(|e| format!("invalid PEM: {e}"))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| rustls_pki_types::CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".to_owned());
    }
    for c in &certs {
        parse(c).map_err(|e| e.to_string())?;
    }
    Ok(certs)
}

pub fn certs_to_pem(certs: &[rustls_pki_types::CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}
