//! The HTTP admin API (axum): health and readiness, Prometheus metrics, agents, incidents,
//! posture, compliance, signed kill / revive commands, and the web page.
//!
//! Layer: uses `telemetry`, `store`, `sink`, `posture`, `control`, `response`, `blueprint`,
//! `event`, `secret`; never the daemon (it publishes commands through [`Commands`], which the
//! daemon implements).
//!
//! Everything but `/healthz`, `/readyz` and the static page itself needs
//! `Authorization: Bearer <token>`. The API reads the state the latest checkpoint wrote (at most
//! `checkpoint_interval` old) for the partitions this instance owns; it never blocks the engine.

mod handlers;
pub mod metrics;
mod server;
mod settings;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sha2::{Digest, Sha256};

pub use server::Limits;
pub use settings::{ApiConfig, ApiSettings};

use crate::blueprint::BlueprintSet;
use crate::control::{Command, Verb};
use crate::posture::PostureSettings;
use crate::stop::Stop;
use crate::telemetry::Live;

/// Publishes signed operator commands on the control topic (the daemon's Kafka producer).
pub trait Commands: Send + Sync {
    /// Signs and publishes `verb` for `agent`; returns the command once the broker acknowledged
    /// it.
    fn publish(&self, verb: Verb, agent: &str, reason: &str) -> Result<Command, PublishError>;
}

/// Why a command was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request is not a valid command.
    #[error(transparent)]
    Request(#[from] crate::control::RequestError),
    /// The command could not be signed or encoded.
    #[error("cannot encode the command: {0}")]
    Encode(#[from] serde_json::Error),
    /// The control topic did not take it (the producer's error).
    #[error("{0}")]
    Topic(Box<dyn std::error::Error + Send + Sync>),
}

/// Why the admin API could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Its address could not be bound.
    #[error("admin API: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The bound socket could not be set up, or the runtime started.
    #[error("admin API: {0}")]
    Io(#[from] std::io::Error),
    /// Its TLS certificate or key could not be used.
    #[error("admin API: TLS: {0}")]
    Pem(#[from] crate::tls::PemError),
    /// rustls refused the TLS settings.
    #[error("admin API: TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the handlers share.
pub struct AppState {
    /// The live daemon state.
    pub live: Arc<Live>,
    /// Blueprints in force.
    pub blueprints: Arc<BlueprintSet>,
    /// Posture settings.
    pub posture: PostureSettings,
    /// SHA-256 of the bearer token (compared digest to digest).
    token_digest: [u8; 32],
    /// Publishes commands, if the API may.
    pub commander: Option<Box<dyn Commands>>,
    /// Build version for `guardian_build_info`.
    pub version: &'static str,
}

impl AppState {
    /// A state over `live` with this token; `commander` enables the kill / revive endpoints.
    pub fn new(
        live: Arc<Live>,
        blueprints: Arc<BlueprintSet>,
        posture: PostureSettings,
        token: &str,
        commander: Option<Box<dyn Commands>>,
    ) -> AppState {
        AppState {
            live,
            blueprints,
            posture,
            token_digest: Sha256::digest(token.as_bytes()).into(),
            commander,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(v) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let Some((scheme, t)) = v.to_str().ok().and_then(|v| v.split_once(' ')) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let d: [u8; 32] = Sha256::digest(t.trim().as_bytes()).into();
        d == self.token_digest
    }
}

async fn require_token(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if s.authorized(&req) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"agent-guardian\"")],
        axum::Json(serde_json::json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

/// The router: public health, readiness and page; everything else behind the token.
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics::handler))
        .route("/agents", get(handlers::agents))
        .route("/agents/{id}", get(handlers::agent))
        .route("/agents/{id}/kill", post(handlers::kill))
        .route("/agents/{id}/revive", post(handlers::revive))
        .route("/incidents", get(handlers::incidents))
        .route("/posture", get(handlers::posture))
        .route("/compliance", get(handlers::compliance_list))
        .route("/compliance/{framework}", get(handlers::compliance))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(handlers::readyz))
        .route("/", get(web::index))
        .merge(protected)
        .with_state(state)
        .layer(middleware::map_response(no_sniff))
}

/// Every response: browsers take its content type as given (no sniffing a JSON body into a page).
async fn no_sniff(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, ApiError> {
    let chain = crate::tls::certificates(cert)?;
    let key = crate::tls::private_key(key)?;
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// The admin API, bound to its address and ready to serve.
pub struct Server {
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    app: Router,
    addr: SocketAddr,
    limits: Limits,
    metrics: Arc<crate::telemetry::Metrics>,
}

/// Binds the listener and loads the TLS material (the start-up steps that can fail); serving
/// starts with [`Server::run`].
pub fn bind(settings: &ApiSettings, state: AppState) -> Result<Server, ApiError> {
    let listener =
        std::net::TcpListener::bind(settings.listen).map_err(|source| ApiError::Listen {
            addr: settings.listen,
            source,
        })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tls = match &settings.tls {
        Some((c, k)) => Some(tls_config(c, k)?),
        None => None,
    };
    tracing::info!(%addr, tls = tls.is_some(), "admin API listening");
    Ok(Server {
        listener,
        tls,
        metrics: state.live.metrics.clone(),
        app: router(Arc::new(state)),
        addr,
        limits: Limits::default(),
    })
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Other connection limits than the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// Serves on the calling thread until `stop`; an error if serving fails.
    pub fn run(self, stop: Stop) -> Result<(), ApiError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let served = server::serve(
            self.listener,
            self.tls,
            self.app,
            self.limits,
            self.metrics,
            stop,
        );
        Ok(rt.block_on(served)?)
    }
}
