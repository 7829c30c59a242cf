//! The admin API's connections: accepted up to a cap, TLS when configured, HTTP/1.1 served by
//! hyper with the router, and closed when a client is slow or idle.
//!
//! A client that opens connections and sends nothing, or sends a request's head or body a byte
//! at a time, would otherwise hold a connection (and a task) for ever: each connection must send
//! its TLS handshake and each request head within [`Limits::header_timeout`], and lives at most
//! [`Limits::lifetime`] (a keep-alive client reconnects); beyond [`Limits::connections`] open
//! connections, new ones are closed at once and counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::stop::Stop;
use crate::telemetry::Metrics;

/// How long and how many connections the admin API keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub connections: usize,
    /// Time a connection has for its TLS handshake and for each request head.
    pub header_timeout: Duration,
    /// Time a connection lives at most.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 64,
            header_timeout: Duration::from_secs(10),
            lifetime: Duration::from_secs(60),
        }
    }
}

/// Accepts and serves connections until `stop`; those refused at the cap are counted in
/// `metrics`.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: Stop,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let tls = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    let slots = Arc::new(Semaphore::new(limits.connections));
    let stopped = stop.stopped();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            () = &mut stopped => return Ok(()),
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "admin API: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics
                .api_connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "admin API: too many connections, closed");
            drop(stream);
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served = async {
                match tls {
                    None => connection(stream, app, limits).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => connection(s, app, limits).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin API: TLS"),
                            Err(_) => tracing::debug!(%peer, "admin API: TLS handshake too slow"),
                        }
                    }
                }
            };
            if tokio::time::timeout(limits.lifetime, served).await.is_err() {
                tracing::debug!(%peer, "admin API: connection closed at its lifetime");
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection, each request head within the header timeout.
async fn connection<S>(io: S, app: Router, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin API: connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// Reads until the server closes the connection (or `within` passes): the bytes read and
    /// whether it closed.
    fn until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
        s.set_read_timeout(Some(within)).expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
                Err(_) => return (got, false),
            }
        }
    }

    /// Beyond the cap a connection is closed at once and counted; a connection that sends
    /// nothing, or a request head and then not its body, is closed at its timeout; once they
    /// are gone, a request is served.
    #[test]
    fn slow_idle_and_surplus_connections_are_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route(
            "/",
            axum::routing::any(|body: String| async move { format!("ok {}", body.len()) }),
        );
        let limits = Limits {
            connections: 2,
            header_timeout: Duration::from_millis(300),
            lifetime: Duration::from_secs(2),
        };
        let metrics = Arc::new(Metrics::default());
        let stop = Stop::new();
        let server = {
            let (metrics, stop) = (metrics.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(listener, None, app, limits, metrics, stop))
            })
        };
        let connect = || TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        let mut idle = connect();
        let mut slow = connect();
        slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
            .expect("write");
        std::thread::sleep(Duration::from_millis(100));
        let (_, closed) = until_closed(&mut connect(), Duration::from_secs(1));
        assert!(closed, "the third connection is closed at once");
        assert_eq!(metrics.api_connections_refused.load(Ordering::Relaxed), 1);
        let (_, closed) = until_closed(&mut idle, Duration::from_secs(5));
        assert!(closed, "an idle connection is closed");
        let (_, closed) = until_closed(&mut slow, Duration::from_secs(5));
        assert!(
            closed,
            "a body that never comes ends with the connection's lifetime"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut ok = connect();
        ok.write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .expect("write");
        let (got, _) = until_closed(&mut ok, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok 3"),
            "{text}"
        );
        stop.set();
        server.join().expect("server thread").expect("served");
    }
}
