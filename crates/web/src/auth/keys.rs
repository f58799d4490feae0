//! The local development signing key: an Ed25519 private key in a PKCS#8 PEM file, created
//! on first use with mode 0600.

use super::KeyError;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// An Ed25519 key that signs tokens; its public half verifies them. Neither `Debug` nor any
/// log line shows the private half.
#[derive(Clone)]
pub struct LocalKey {
    signing: SigningKey,
}

impl LocalKey {
    /// Where a data directory keeps the local key.
    pub const PATH_IN_DATA_DIR: &str = "auth/signing-key.pem";

    /// A new random key, in memory only.
    pub fn generate() -> Self {
        Self { signing: SigningKey::generate(&mut rand_core::OsRng) }
    }

    /// Reads the key at `path`, or creates it (and its directory) if there is none. Processes
    /// starting at once on one path all end up with the same key: one creates it, the others
    /// read it.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Err(KeyError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => Self::create(path),
            loaded => loaded,
        }
    }

    /// Reads the key at `path` (PKCS#8 PEM).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read = |source| KeyError::Read { path: path.to_owned(), source };
        let pem = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(read)?);
        let signing =
            SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::NotEd25519PrivateKey { path: path.to_owned() })?;
        let mode = fs::metadata(path).map_err(read)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the signing key can be read by other users: chmod 600 it");
        }
        Ok(Self { signing })
    }

    fn create(path: &Path) -> Result<Self, KeyError> {
        let failed = |source| KeyError::Create { path: path.to_owned(), source };
        let directory = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        DirBuilder::new().recursive(true).mode(0o700).create(directory).map_err(failed)?;
        let key = Self::generate();
        let pem = key.signing.to_pkcs8_pem(LineEnding::LF).expect("an Ed25519 key encodes as PKCS#8");
        // Written whole under a name of its own, then linked into place: a link never replaces
        // a file, so when several processes race, the first key linked wins and the others
        // read it, never half a file.
        let own = directory.join(format!(".signing-key-{}.tmp", uuid::Uuid::now_v7().simple()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&own)
            .and_then(|mut file| file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()))
            .and_then(|()| fs::hard_link(&own, path));
        let _ = fs::remove_file(&own);
        match written {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created a local signing key");
                Ok(key)
            }
            Err(error) if error.kind() == ErrorKind::AlreadyExists => Self::load(path),
            Err(error) => Err(failed(error)),
        }
    }

    /// The public half as a PEM `PUBLIC KEY` (SPKI), for whoever checks tokens elsewhere.
    pub fn public_key_pem(&self) -> String {
        self.signing.verifying_key().to_public_key_pem(LineEnding::LF).expect("an Ed25519 public key encodes as SPKI")
    }

    pub(crate) fn encoding_key(&self) -> EncodingKey {
        let der = self.signing.to_pkcs8_der().expect("an Ed25519 key encodes as PKCS#8");
        EncodingKey::from_ed_der(der.as_bytes())
    }

    pub(crate) fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(self.signing.verifying_key().as_bytes())
    }
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey").field("public", &self.signing.verifying_key()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_private_to_its_owner_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LocalKey::PATH_IN_DATA_DIR);
        let created = LocalKey::load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let again = LocalKey::load_or_create(&path).unwrap();
        assert_eq!(again.public_key_pem(), created.public_key_pem());
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "a temporary file was left behind");
    }

    #[test]
    fn processes_racing_to_create_the_key_all_get_the_one_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth").join("signing-key.pem");
        let keys: Vec<String> = std::thread::scope(|scope| {
            let racers: Vec<_> =
                (0..8).map(|_| scope.spawn(|| LocalKey::load_or_create(&path).unwrap().public_key_pem())).collect();
            racers.into_iter().map(|racer| racer.join().unwrap()).collect()
        });
        let on_disk = LocalKey::load(&path).unwrap().public_key_pem();
        assert!(keys.iter().all(|key| *key == on_disk), "a racer kept a key that lost the race");
    }

    #[test]
    fn a_file_that_is_not_an_ed25519_key_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let error = LocalKey::load(&path).unwrap_err().to_string();
        assert!(error.contains("is not an Ed25519 private key") && error.contains("openssl genpkey"), "{error}");
        let missing = LocalKey::load(&dir.path().join("nothing.pem")).unwrap_err();
        assert!(matches!(missing, KeyError::Read { .. }), "{missing}");
    }

    #[test]
    fn debug_output_shows_no_private_key() {
        let key = LocalKey::generate();
        let secret = key.signing.to_bytes().iter().map(|b| format!("{b}")).collect::<Vec<_>>().join(", ");
        assert!(!format!("{key:?}").contains(&secret));
    }
}
