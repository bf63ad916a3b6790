//! The mesh certificate authority: a root kept in the local directory (key file 0600), the trust
//! bundle (the active root plus any extra trusted roots), and leaf issuance for verified CSRs.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pqmesh_mtls::{KeyAlgorithm, SpiffeId, TrustBundle};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::csr::VerifiedCsr;

pub const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(5 * 60);
pub const MAX_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Back-date leaves a little so a peer whose clock is slightly behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA key file {path} is readable by group or others (mode {mode:o}); it must be 0600")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("CA file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("CA key algorithm {configured} was requested, but the root in {path} uses {found}")]
    AlgorithmMismatch {
        path: PathBuf,
        configured: KeyAlgorithm,
        found: String,
    },
    #[error("root key generation failed: {0}")]
    KeyGen(#[from] pqmesh_mtls::keys::KeyError),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A leaf the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, CaKey>,
    root_der: CertificateDer<'static>,
    root_not_after: SystemTime,
    bundle: TrustBundle,
    leaf_lifetime: Duration,
}

/// Where the CA keeps its files inside the local directory.
pub struct CaPaths {
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    /// Optional: more roots to trust (PEM), e.g. the next root during a rotation.
    pub extra_roots: PathBuf,
}

impl CaPaths {
    pub fn in_dir(dir: &Path) -> Self {
        let ca = dir.join("ca");
        Self {
            root_cert: ca.join("root-cert.pem"),
            root_key: ca.join("root-key.pem"),
            extra_roots: ca.join("extra-trusted-roots.pem"),
        }
    }
}

impl CertificateAuthority {
    /// Loads the root from `paths`, or creates one with `alg` if none exists yet.
    pub fn load_or_create(
        paths: &CaPaths,
        trust_domain: &str,
        alg: KeyAlgorithm,
        leaf_lifetime: Duration,
    ) -> Result<Self, CaError> {
        let (root_pem, key_pem) = if paths.root_cert.exists() || paths.root_key.exists() {
            (read(&paths.root_cert)?, read_private(&paths.root_key)?)
        } else {
            let (cert, key) = create_root(trust_domain, alg)?;
            let dir = paths.root_cert.parent().unwrap_or(Path::new("."));
            // The directory holds the root key: owner only.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CaError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
            // Key first, so a crash never leaves a certificate without its key.
            write_atomic(&paths.root_key, key.as_bytes(), 0o600)?;
            write_atomic(&paths.root_cert, cert.as_bytes(), 0o644)?;
            tracing::info!(path = %paths.root_cert.display(), %alg, "created a new mesh root CA");
            (cert, key)
        };
        let extra = if paths.extra_roots.exists() {
            Some(read(&paths.extra_roots)?)
        } else {
            None
        };
        Self::from_pem(
            &root_pem,
            &key_pem,
            extra.as_deref(),
            &paths.root_cert,
            trust_domain,
            alg,
            leaf_lifetime,
        )
    }

    /// The CA from PEM text: the root certificate, its PKCS#8 key, and optionally more roots to
    /// trust. `source` names where the text came from (a file, a Secret) in errors.
    pub fn from_pem(
        root_pem: &str,
        key_pem: &str,
        extra_roots_pem: Option<&str>,
        source: &Path,
        trust_domain: &str,
        alg: KeyAlgorithm,
        leaf_lifetime: Duration,
    ) -> Result<Self, CaError> {
        let invalid = |reason: String| CaError::Invalid {
            path: source.to_owned(),
            reason,
        };
        let root_der = pqmesh_mtls::x509::certs_from_pem(root_pem)
            .map_err(invalid)?
            .remove(0);
        let key = load_key(key_pem).map_err(|reason| invalid(format!("key: {reason}")))?;
        if rcgen::PublicKeyData::algorithm(&key) != alg.rcgen() {
            tracing::warn!(
                configured = %alg,
                "the existing root's key algorithm differs from the configured one; using the existing root"
            );
        }
        let issuer =
            Issuer::from_ca_cert_der(&root_der, key).map_err(|e| invalid(e.to_string()))?;
        let summary = pqmesh_mtls::x509::summary(&root_der).map_err(|e| invalid(e.to_string()))?;
        let mut roots = vec![root_der.clone()];
        if let Some(extra) = extra_roots_pem {
            let extra = pqmesh_mtls::x509::certs_from_pem(extra)
                .map_err(|reason| invalid(format!("extra trusted roots: {reason}")))?;
            roots.extend(extra.into_iter().filter(|c| *c != root_der));
        }
        let bundle = TrustBundle::new(roots).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            root_der,
            root_not_after: summary.not_after,
            bundle,
            leaf_lifetime,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    pub fn root_not_after(&self) -> SystemTime {
        self.root_not_after
    }

    pub fn leaf_lifetime(&self) -> Duration {
        self.leaf_lifetime
    }

    /// Issues a workload leaf: the CSR's key, the identity's SPIFFE ID as the only SAN.
    pub fn issue(&self, csr: &VerifiedCsr, id: &SpiffeId) -> Result<IssuedLeaf, CaError> {
        self.issue_with_names(csr, id, &[])
    }

    /// Issues a leaf for a key held by this process (the control plane's own serving cert),
    /// with extra DNS/IP names so plain TLS clients can also reach it by name.
    pub fn issue_serving(
        &self,
        key: &KeyPair,
        id: &SpiffeId,
        names: &[String],
    ) -> Result<IssuedLeaf, CaError> {
        self.issue_with_names(key, id, names)
    }

    fn issue_with_names(
        &self,
        key: &impl rcgen::PublicKeyData,
        id: &SpiffeId,
        names: &[String],
    ) -> Result<IssuedLeaf, CaError> {
        let now = SystemTime::now();
        let not_after = now + self.leaf_lifetime;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Sign(e))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        let cert = params.signed_by(key, &self.issuer)?;
        // rcgen encodes validity with second precision; report what the certificate says.
        let not_after = pqmesh_mtls::x509::summary(cert.der())
            .map(|s| s.not_after)
            .unwrap_or(not_after);
        Ok(IssuedLeaf {
            chain: vec![cert.der().clone()],
            not_after,
        })
    }
}

/// A new self-signed root for `trust_domain`: (certificate PEM, PKCS#8 key PEM).
pub fn create_root(trust_domain: &str, alg: KeyAlgorithm) -> Result<(String, String), CaError> {
    let key = alg.generate()?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pqmesh");
    dn.push(DnType::CommonName, format!("pqmesh root CA {trust_domain}"));
    params.distinguished_name = dn;
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn load_key(pem_text: &str) -> Result<CaKey, String> {
    let block = pem::parse(pem_text).map_err(|e| format!("invalid PEM: {e}"))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(format!(
            "expected a PKCS#8 \"PRIVATE KEY\" block, found {:?}",
            block.tag()
        ));
    }
    let der_bytes = block.contents();
    use aws_lc_rs::signature::KeyPair as _;
    use aws_lc_rs::signature::{PqdsaKeyPair, ML_DSA_44_SIGNING, ML_DSA_65_SIGNING};
    for (alg, signing) in [
        (KeyAlgorithm::MlDsa44, &ML_DSA_44_SIGNING),
        (KeyAlgorithm::MlDsa65, &ML_DSA_65_SIGNING),
    ] {
        if let Ok(pair) = PqdsaKeyPair::from_pkcs8(signing, der_bytes) {
            let public = pair.public_key().as_ref().to_vec();
            return Ok(CaKey::MlDsa { alg, pair, public });
        }
    }
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der_bytes.to_vec());
    KeyPair::from_der_and_sign_algo(&pkcs8.into(), &rcgen::PKCS_ECDSA_P256_SHA256)
        .map(CaKey::Rcgen)
        .map_err(|_| {
            "not a PKCS#8 key of a supported algorithm (ecdsa-p256, ml-dsa-44, ml-dsa-65)"
                .to_owned()
        })
}

/// The CA's signing key. rcgen cannot load ML-DSA keys from PKCS#8, so those are held
/// through aws-lc-rs directly.
pub enum CaKey {
    Rcgen(KeyPair),
    MlDsa {
        alg: KeyAlgorithm,
        pair: aws_lc_rs::signature::PqdsaKeyPair,
        public: Vec<u8>,
    },
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::Rcgen(k) => k.der_bytes(),
            CaKey::MlDsa { public, .. } => public,
        }
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKey::Rcgen(k) => k.algorithm(),
            CaKey::MlDsa { alg, .. } => alg.rcgen(),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::Rcgen(k) => k.sign(msg),
            CaKey::MlDsa { pair, .. } => {
                let mut sig = vec![0; pair.algorithm().signature_len()];
                let len = pair
                    .sign(msg, &mut sig)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                sig.truncate(len);
                Ok(sig)
            }
        }
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and never shorter than 16 bytes
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_private(path: &Path) -> Result<String, CaError> {
    let meta = fs::metadata(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    read(path)
}

/// Writes via a temporary file and rename so readers never see a half-written file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
