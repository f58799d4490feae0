//! Secrets the storefront keeps in the data directory, each created on first start with mode
//! 0600 (written whole, then linked into place, so that instances starting together agree).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the data directory keeps the key of the session cookies.
pub const COOKIE_KEY_IN_DATA_DIR: &str = "storefront/cookie-key";
/// Where the data directory keeps the generated password of the admin account.
pub const ADMIN_PASSWORD_IN_DATA_DIR: &str = "storefront/admin-password";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} must hold at least {min} bytes", path.display())]
    TooShort { path: PathBuf, min: usize },
}

/// The bytes of the secret at `path`, or `make()`'s, written there with mode 0600 if there is
/// no file yet.
pub fn read_or_create(path: &Path, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, FileError> {
    match fs::read(path) {
        Ok(bytes) => {
            warn_if_readable_by_others(path);
            return Ok(bytes);
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(source) => return Err(FileError::Read { path: path.to_owned(), source }),
    }
    let failed = |source| FileError::Create { path: path.to_owned(), source };
    let directory = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    DirBuilder::new().recursive(true).mode(0o700).create(directory).map_err(failed)?;
    let bytes = make();
    let own = directory.join(format!(".secret-{}.tmp", uuid::Uuid::now_v7().simple()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&own)
        .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
        .and_then(|()| fs::hard_link(&own, path));
    let _ = fs::remove_file(&own);
    match written {
        Ok(()) => Ok(bytes),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            fs::read(path).map_err(|source| FileError::Read { path: path.to_owned(), source })
        }
        Err(error) => Err(failed(error)),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    if fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0) {
        tracing::warn!(path = %path.display(), "a storefront secret can be read by other users: chmod 600 it");
    }
}

/// `count` random bytes from the operating system.
pub fn random_bytes(count: usize) -> Vec<u8> {
    use rand_core::RngCore;
    let mut bytes = vec![0; count];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A random password of 24 characters (144 bits), URL-safe.
pub fn random_password() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(18))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_created_private_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("storefront-files-{}", uuid::Uuid::now_v7().simple()));
        let path = dir.join(COOKIE_KEY_IN_DATA_DIR);
        let first = read_or_create(&path, || random_bytes(64)).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = read_or_create(&path, || panic!("the key exists")).unwrap();
        assert_eq!(first, again);
        fs::remove_dir_all(dir).unwrap();
    }
}
