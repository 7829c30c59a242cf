//! PEM files for rustls: certificate chains and private keys, each error naming its file. Used by
//! the admin API's server and the SIEM sinks' TLS clients.
//!
//! Layer: near the bottom; imports only [`crate::files`].

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that could not be used, naming it.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// It could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::files::FileError,
    },
    /// It holds no valid PEM object of the kind wanted.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
}

/// Every certificate of a PEM file, in order.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Pem {
            path: path.into(),
            source,
        })
}

/// The first private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| PemError::Pem {
        path: path.into(),
        source,
    })
}

/// The bytes of a PEM file (a regular file of bounded size, see [`crate::files`]).
fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    crate::files::read_bounded(path, crate::files::MAX_FILE_BYTES).map_err(|source| {
        PemError::Read {
            path: path.into(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.pem");
        assert!(certificates(&missing)
            .unwrap_err()
            .to_string()
            .contains("absent.pem"));
        assert!(private_key(&missing)
            .unwrap_err()
            .to_string()
            .contains("absent.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(certificates(&empty).unwrap().len(), 0);
        assert!(private_key(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty.pem"));
    }
}
