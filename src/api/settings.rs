//! Admin API settings (`[api]` in the daemon's configuration file; the API is off without it).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// `[api]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, `host:port`; default "127.0.0.1:9464".
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token for everything but `/healthz` and `/readyz` (required, 16 bytes or more).
    pub token: Secret,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

/// `[api]` validated, the token resolved.
#[derive(Clone)]
pub struct ApiSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The bearer token.
    pub token: String,
    /// Certificate and key files, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("tls", &self.tls)
            .finish()
    }
}

impl ApiConfig {
    /// Checks every field, pushing each problem with its path onto `errors`.
    pub fn validate(&self, errors: &mut Vec<String>) -> Option<ApiSettings> {
        let n = errors.len();
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "api.listen: {:?} is not an address like \"0.0.0.0:9464\"",
                    self.listen
                ));
                None
            }
        };
        let token = match self.token.resolve() {
            Ok(t) if t.len() >= 16 => Some(t),
            Ok(_) => {
                errors.push("api.token: shorter than 16 bytes".into());
                None
            }
            Err(e) => {
                errors.push(format!("api.token: {e}"));
                None
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                for (name, p) in [("tls_cert", c), ("tls_key", k)] {
                    if !p.is_file() {
                        errors.push(format!(
                            "api.{name}: {} is not a readable file",
                            p.display()
                        ));
                    }
                }
                Some((c.clone(), k.clone()))
            }
            _ => {
                errors.push("api: tls_cert and tls_key go together".into());
                None
            }
        };
        if errors.len() > n {
            return None;
        }
        Some(ApiSettings {
            listen: listen?,
            token: token?,
            tls,
        })
    }
}
