//! Secrets of the configuration: a literal, an environment variable or a file, resolved when the
//! configuration is validated, so every settings type can hold one.
//!
//! Layer: uses only [`crate::files`].

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A secret: a literal value (discouraged), an environment variable, or a file. Its `Debug`,
/// `Display` and `Serialize` forms never show a literal value.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Secret {
    /// `{ env = "NAME" }`: read from an environment variable.
    Env {
        /// Variable name.
        env: String,
    },
    /// `{ file = "/run/secrets/key" }`: read from a file (trailing newline trimmed).
    File {
        /// Path of the file.
        file: PathBuf,
    },
    /// `"value"`: the secret itself, inline.
    Literal(String),
}

/// Why a secret has no value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Its environment variable is not set (or not Unicode).
    #[error("environment variable {0} is not set")]
    Unset(String),
    /// Its file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::files::FileError,
    },
}

impl Secret {
    /// Resolves the secret's value.
    pub fn resolve(&self) -> Result<String, SecretError> {
        match self {
            Secret::Literal(v) => Ok(v.clone()),
            Secret::Env { env } => std::env::var(env).map_err(|_| SecretError::Unset(env.clone())),
            Secret::File { file } => crate::files::read_text(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| SecretError::File {
                    path: file.clone(),
                    source,
                }),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

impl Serialize for Secret {
    /// The redacted form (see `Display`): serialized configuration never carries a secret.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Literal(_) => f.write_str("<redacted>"),
            Secret::Env { env } => write!(f, "<from env {env}>"),
            Secret::File { file } => write!(f, "<from file {}>", file.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret file that is a device is refused at once, not read until memory runs out.
    #[test]
    fn a_secret_file_is_a_regular_file_of_bounded_size() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("key");
        std::fs::write(&p, "0123456789abcdef\n").expect("write");
        let ok = Secret::File { file: p };
        assert_eq!(ok.resolve().unwrap(), "0123456789abcdef");
        let dev = Secret::File {
            file: "/dev/zero".into(),
        };
        let e = dev.resolve().expect_err("a device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
