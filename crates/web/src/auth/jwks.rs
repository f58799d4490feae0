//! An identity provider's keys, from its JWKS URL: fetched when first needed, cached, and
//! fetched again for a key id not seen yet (the provider rotated its keys) or once they are old.

use super::verifier::{TrustedKey, jwk_key};
use super::{AuthError, Issuance, KeyError};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Where an identity provider publishes its keys, and how often to ask for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSettings {
    /// The JWKS document (http or https).
    pub url: String,
    /// Fewest time between two fetches, so a stream of tokens with made-up key ids costs one
    /// fetch per interval, not one per request.
    pub refetch_interval: Duration,
    /// Keys older than this are fetched again (a withdrawn key stops being trusted).
    pub max_age: Duration,
    /// How long a fetch may take.
    pub timeout: Duration,
}

impl JwksSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            refetch_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(15 * 60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Largest JWKS document read.
const MAX_DOCUMENT: u64 = 1 << 20;

pub(crate) struct Jwks {
    settings: JwksSettings,
    issuance: Issuance,
    agent: ureq::Agent,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching (one fetch at a time); when the last fetch started.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

struct KeySet {
    keys: Vec<Arc<TrustedKey>>,
    fetched_at: Instant,
}

impl KeySet {
    /// The key named `kid`; without a `kid`, the only key for `algorithm`.
    fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<Arc<TrustedKey>> {
        let mut candidates = self.keys.iter().filter(|key| match kid {
            Some(kid) => key.kid.as_deref() == Some(kid),
            None => key.validation.algorithms.contains(&algorithm),
        });
        match (candidates.next(), candidates.next()) {
            (Some(key), None) => Some(key.clone()),
            _ => None,
        }
    }
}

impl Jwks {
    pub(crate) fn new(settings: JwksSettings, issuance: Issuance) -> Result<Self, KeyError> {
        let uri: ureq::http::Uri = settings.url.parse().map_err(|_| KeyError::JwksUrl(settings.url.clone()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(KeyError::JwksUrl(settings.url.clone()));
        }
        let agent = ureq::Agent::config_builder().timeout_global(Some(settings.timeout)).build().into();
        Ok(Self { settings, issuance, agent, keys: RwLock::new(None), last_fetch: tokio::sync::Mutex::new(None) })
    }

    /// The key a token names, fetching the key set when the cache cannot answer.
    pub(crate) async fn key_for(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<Arc<TrustedKey>, AuthError> {
        if let Some(key) = self.cached(kid, algorithm, true) {
            return Ok(key);
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(kid, algorithm, true) {
            return Ok(key);
        }
        if last_fetch.is_none_or(|at| at.elapsed() >= self.settings.refetch_interval) {
            *last_fetch = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => *self.keys.write().expect("not poisoned") = Some(Arc::new(keys)),
                Err(error) => {
                    tracing::warn!(url = %self.settings.url, %error, "cannot fetch the JWKS; keeping the keys fetched before");
                }
            }
        }
        drop(last_fetch);
        match self.cached(kid, algorithm, false) {
            Some(key) => Ok(key),
            None if self.keys.read().expect("not poisoned").is_none() => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    fn cached(&self, kid: Option<&str>, algorithm: Algorithm, fresh_only: bool) -> Option<Arc<TrustedKey>> {
        let keys = self.keys.read().expect("not poisoned");
        let keys = keys.as_ref()?;
        if fresh_only && keys.fetched_at.elapsed() >= self.settings.max_age {
            return None;
        }
        keys.find(kid, algorithm)
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let (agent, url) = (self.agent.clone(), self.settings.url.clone());
        let document = tokio::task::spawn_blocking(move || {
            agent
                .get(&url)
                .header("accept", "application/json")
                .call()?
                .body_mut()
                .with_config()
                .limit(MAX_DOCUMENT)
                .read_to_string()
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        let set: JwkSet = serde_json::from_str(&document).map_err(|error| format!("not a JWKS: {error}"))?;
        let keys: Vec<Arc<TrustedKey>> =
            set.keys.iter().filter_map(|jwk| jwk_key(jwk, &self.issuance)).map(Arc::new).collect();
        tracing::info!(url = %self.settings.url, keys = keys.len(), of = set.keys.len(), "fetched the JWKS");
        Ok(KeySet { keys, fetched_at: Instant::now() })
    }
}
