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
    #[error("CA roots: {0}")]
    Roots(String),
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
    signing_alg: &'static rcgen::SignatureAlgorithm,
    version: String,
    bundle: TrustBundle,
    leaf_lifetime: Duration,
}

/// Where the CA keeps its files inside the local directory.
pub struct CaPaths {
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    /// Optional: more roots to trust (PEM), e.g. the next root during a rotation.
    pub extra_roots: PathBuf,
    /// Optional: a staged next root (trusted, not yet signing) and its key (rotation step 1).
    pub next_cert: PathBuf,
    pub next_key: PathBuf,
    /// Optional: the root that signed before the last activation (trusted until `finish`).
    pub previous_cert: PathBuf,
}

impl CaPaths {
    pub fn in_dir(dir: &Path) -> Self {
        let ca = dir.join("ca");
        Self {
            root_cert: ca.join("root-cert.pem"),
            root_key: ca.join("root-key.pem"),
            extra_roots: ca.join("extra-trusted-roots.pem"),
            next_cert: ca.join("next-root-cert.pem"),
            next_key: ca.join("next-root-key.pem"),
            previous_cert: ca.join("previous-root-cert.pem"),
        }
    }

    /// Every file whose change changes the CA (polled by the reloader).
    pub fn watched(&self) -> Vec<&Path> {
        vec![
            &self.root_cert,
            &self.root_key,
            &self.extra_roots,
            &self.next_cert,
            &self.previous_cert,
        ]
    }
}

/// The roots a CA works with, independent of where they are kept (files in local mode, a Secret
/// in Kubernetes): the signing root with its key, and more roots to trust. The trust bundle is
/// the signing root plus `also_trusted`, so a root is rotated by trusting the next one first,
/// then signing with it while the old one stays trusted, then dropping the old one.
#[derive(Clone)]
pub struct CaRoots {
    pub signing_cert_pem: String,
    /// PKCS#8 PEM. Never logged.
    pub signing_key_pem: String,
    /// PEM texts, each with one or more CERTIFICATE blocks.
    pub also_trusted_pem: Vec<String>,
}

impl std::fmt::Debug for CaRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRoots")
            .field("also_trusted", &self.also_trusted_pem.len())
            .finish_non_exhaustive()
    }
}

impl CaRoots {
    /// Reads the local directory's CA files (the signing root must exist).
    pub fn read(paths: &CaPaths) -> Result<Self, CaError> {
        let signing_cert_pem = read(&paths.root_cert)?;
        let signing_key_pem = read_private(&paths.root_key)?;
        let mut also_trusted_pem = Vec::new();
        for path in [&paths.next_cert, &paths.previous_cert, &paths.extra_roots] {
            if path.exists() {
                also_trusted_pem.push(read(path)?);
            }
        }
        Ok(Self {
            signing_cert_pem,
            signing_key_pem,
            also_trusted_pem,
        })
    }
}

/// A new self-signed root for `trust_domain`: (certificate PEM, PKCS#8 key PEM).
pub fn generate_root(trust_domain: &str, alg: KeyAlgorithm) -> Result<(String, String), CaError> {
    create_root(trust_domain, alg)
}

impl CertificateAuthority {
    /// Loads the root from `paths`, or creates one with `alg` if none exists yet.
    pub fn load_or_create(
        paths: &CaPaths,
        trust_domain: &str,
        alg: KeyAlgorithm,
        leaf_lifetime: Duration,
    ) -> Result<Self, CaError> {
        if !paths.root_cert.exists() && !paths.root_key.exists() {
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
        }
        let ca =
            Self::from_roots(&CaRoots::read(paths)?, trust_domain, leaf_lifetime).map_err(|e| {
                match e {
                    // Name the file the problem is in.
                    CaError::Roots(reason) => CaError::Invalid {
                        path: if reason.starts_with("signing root certificate") {
                            paths.root_cert.clone()
                        } else if reason.starts_with("signing root key") {
                            paths.root_key.clone()
                        } else {
                            paths
                                .root_cert
                                .parent()
                                .unwrap_or(Path::new("."))
                                .to_owned()
                        },
                        reason,
                    },
                    other => other,
                }
            })?;
        if ca.signing_alg != alg.rcgen() {
            tracing::warn!(
                configured = %alg,
                "the existing root's key algorithm differs from the configured one; using the existing root"
            );
        }
        Ok(ca)
    }

    /// The CA from PEM text: the signing root certificate, its PKCS#8 key, and optionally more
    /// roots to trust (as `from_roots`). `source` names where the text came from (a file, a
    /// Secret) in errors; a root whose algorithm differs from `alg` is used with a warning.
    pub fn from_pem(
        root_pem: &str,
        key_pem: &str,
        extra_roots_pem: Option<&str>,
        source: &Path,
        trust_domain: &str,
        alg: KeyAlgorithm,
        leaf_lifetime: Duration,
    ) -> Result<Self, CaError> {
        // The first certificate signs (a user-provided tls.crt may carry more after it).
        let first = pqmesh_mtls::x509::certs_from_pem(root_pem)
            .ok()
            .and_then(|certs| certs.into_iter().next())
            .map(|c| pqmesh_mtls::x509::certs_to_pem(&[c]))
            .unwrap_or_else(|| root_pem.to_owned());
        let roots = CaRoots {
            signing_cert_pem: first,
            signing_key_pem: key_pem.to_owned(),
            also_trusted_pem: extra_roots_pem.map(str::to_owned).into_iter().collect(),
        };
        let ca = Self::from_roots(&roots, trust_domain, leaf_lifetime).map_err(|e| match e {
            CaError::Roots(reason) => CaError::Invalid {
                path: source.to_owned(),
                reason,
            },
            other => other,
        })?;
        if ca.signing_alg != alg.rcgen() {
            tracing::warn!(
                configured = %alg,
                "the existing root's key algorithm differs from the configured one; using the existing root"
            );
        }
        Ok(ca)
    }

    /// A CA from roots held anywhere. Refuses a key that does not belong to the signing
    /// certificate, a signing certificate that is not a CA, and unparsable trusted roots.
    pub fn from_roots(
        roots: &CaRoots,
        trust_domain: &str,
        leaf_lifetime: Duration,
    ) -> Result<Self, CaError> {
        let bad = |what: &str, reason: String| CaError::Roots(format!("{what}: {reason}"));
        let mut signing = pqmesh_mtls::x509::certs_from_pem(&roots.signing_cert_pem)
            .map_err(|r| bad("signing root certificate", r))?;
        if signing.len() != 1 {
            return Err(bad(
                "signing root certificate",
                format!("expected one CERTIFICATE block, found {}", signing.len()),
            ));
        }
        let root_der = signing.remove(0);
        let key = load_key(&roots.signing_key_pem).map_err(|r| bad("signing root key", r))?;
        let spki_key =
            subject_public_key(&root_der).map_err(|r| bad("signing root certificate", r))?;
        if rcgen::PublicKeyData::der_bytes(&key) != spki_key.as_slice() {
            return Err(bad(
                "signing root key",
                "does not belong to the signing root certificate".into(),
            ));
        }
        let summary = pqmesh_mtls::x509::summary(&root_der)
            .map_err(|e| bad("signing root certificate", e.to_string()))?;
        let signing_alg = rcgen::PublicKeyData::algorithm(&key);
        let issuer = Issuer::from_ca_cert_der(&root_der, key)
            .map_err(|e| bad("signing root certificate", e.to_string()))?;
        let mut roots_der = vec![root_der.clone()];
        for (i, text) in roots.also_trusted_pem.iter().enumerate() {
            let certs = pqmesh_mtls::x509::certs_from_pem(text)
                .map_err(|r| bad(&format!("trusted roots #{}", i + 1), r))?;
            for cert in certs {
                if !roots_der.contains(&cert) {
                    roots_der.push(cert);
                }
            }
        }
        let bundle = TrustBundle::new(roots_der).map_err(|e| bad("trust bundle", e.to_string()))?;
        Ok(Self {
            version: ca_version(&root_der, bundle.roots()),
            trust_domain: trust_domain.to_owned(),
            issuer,
            root_der,
            root_not_after: summary.not_after,
            signing_alg,
            bundle,
            leaf_lifetime,
        })
    }

    /// A content hash of the signing root and the trust bundle: sidecars whose certificate was
    /// issued under another version re-certify.
    pub fn version(&self) -> String {
        self.version.clone()
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

fn ca_version(signing: &[u8], bundle: &[CertificateDer<'static>]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((signing.len() as u64).to_be_bytes());
    h.update(signing);
    let mut trusted: Vec<&[u8]> = bundle.iter().map(|c| c.as_ref()).collect();
    trusted.sort();
    for t in trusted {
        h.update((t.len() as u64).to_be_bytes());
        h.update(t);
    }
    hex::encode(&h.finalize()[..8])
}

/// The raw public key of a certificate (the subjectPublicKeyInfo BIT STRING).
fn subject_public_key(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    Ok(cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .to_vec())
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
