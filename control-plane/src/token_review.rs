//! Kubernetes workload authentication: the sidecar presents its projected service-account token
//! (audience `pqmesh-ca`); the control plane asks the API server (TokenReview, audience checked)
//! and maps `system:serviceaccount:<ns>:<sa>` to the SPIFFE ID. Positive answers are cached by
//! the token's digest until the token expires (at most 10 minutes); anything the API server does
//! not positively confirm is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use pqmesh_mtls::SpiffeId;
use sha2::{Digest, Sha256};

use crate::tokens::AuthError;

const MAX_CACHE: usize = 50_000;
const MAX_CACHE_TTL: Duration = Duration::from_secs(600);

pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    trust_domain: String,
    cache: Mutex<HashMap<[u8; 32], (SpiffeId, SystemTime)>>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: &str, trust_domain: &str) -> Self {
        Self {
            client,
            audience: audience.to_owned(),
            trust_domain: trust_domain.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn authenticate(&self, token: &str, now: SystemTime) -> Result<SpiffeId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((id, until)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if now < *until {
                return Ok(id.clone());
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(AuthError::Rejected(format!(
                "the API server rejected the token: {why}"
            )));
        }
        // With spec.audiences set, the API server answers with the audiences the token is valid
        // for; ours must be among them (an API server that ignored the field answers none).
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return Err(AuthError::Rejected(format!(
                "the token is not valid for audience {:?}",
                self.audience
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let id = service_account_id(&username, &self.trust_domain)?;
        let until =
            token_expiry(token).map_or(now + MAX_CACHE_TTL, |exp| exp.min(now + MAX_CACHE_TTL));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHE {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHE {
                cache.clear();
            }
        }
        cache.insert(key, (id.clone(), until));
        Ok(id)
    }
}

/// `system:serviceaccount:<namespace>:<name>` → SPIFFE ID; any other user is refused.
pub fn service_account_id(username: &str, trust_domain: &str) -> Result<SpiffeId, AuthError> {
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(|| AuthError::Rejected(format!("{username:?} is not a service account")))?;
    let (ns, sa) = rest
        .split_once(':')
        .ok_or_else(|| AuthError::Rejected(format!("{username:?} is not a service account")))?;
    SpiffeId::new(trust_domain, ns, sa).map_err(|e| AuthError::Rejected(e.to_string()))
}

/// The `exp` of a JWT, read without verification (the API server verified it); only bounds the cache.
fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}
