//! Where formatted messages go: syslog over TCP, UDP or TLS; a size-rotated file; stdout; a
//! Kafka topic. Each transport sends a batch in order and reports how many it delivered.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::kafka::OutputTopics as _;
use super::syslog::{frame, Framing};

/// Errors of a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Network or file I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] crate::sink::kafka::ProduceError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { what, source }
}

/// Network protocol of a syslog sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (RFC 6587), the default.
    #[default]
    Tcp,
    /// UDP (RFC 5426): one message per datagram, no delivery guarantee.
    Udp,
    /// TLS over TCP (RFC 5425), with rustls.
    Tls,
}

/// TLS settings of a syslog sink.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM file of the CA certificates to trust (default: the system's trust store).
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate chain, for receivers that require one.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Name to verify the receiver's certificate against (default: the address's host).
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// Builds the rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        let tls = |e: String| TransportError::Tls(e);
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(p) => {
                for c in crate::tls::certificates(p).map_err(|e| tls(e.to_string()))? {
                    roots
                        .add(c)
                        .map_err(|e| tls(format!("{}: {e}", p.display())))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
        let cfg = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let chain = crate::tls::certificates(c).map_err(|e| tls(e.to_string()))?;
                let key = crate::tls::private_key(k).map_err(|e| tls(e.to_string()))?;
                b.with_client_auth_cert(chain, key)
                    .map_err(|e| tls(e.to_string()))?
            }
            (None, None) => b.with_no_client_auth(),
            _ => return Err(tls("cert_file and key_file go together".into())),
        };
        Ok(Arc::new(cfg))
    }
}

/// A destination for a sink's messages.
pub enum Transport {
    /// Syslog over TCP or TLS.
    Stream(StreamTransport),
    /// Syslog over UDP.
    Udp(UdpTransport),
    /// Lines appended to a file, rotated by size.
    File(FileTransport),
    /// Lines on standard output.
    Stdout,
    /// Messages on a Kafka topic.
    Kafka(KafkaTransport),
}

impl Transport {
    /// Sends `msgs` in order; returns how many were delivered before an error, with the error.
    pub fn send(&mut self, msgs: &[&[u8]]) -> Result<(), (usize, TransportError)> {
        match self {
            Transport::Stream(t) => t.send(msgs),
            Transport::Udp(t) => t.send(msgs),
            Transport::File(t) => t.send(msgs),
            Transport::Stdout => {
                let mut out = io::stdout().lock();
                for (i, m) in msgs.iter().enumerate() {
                    out.write_all(m)
                        .and_then(|_| out.write_all(b"\n"))
                        .map_err(|e| (i, io_err("stdout")(e)))?;
                }
                out.flush().map_err(|e| (0, io_err("stdout")(e)))
            }
            Transport::Kafka(t) => t.send(msgs),
        }
    }

    /// True for syslog over TCP or TLS, which has no acknowledgements: a message written is only
    /// taken as delivered once the connection stayed healthy for a while after it.
    pub fn confirms_late(&self) -> bool {
        matches!(self, Transport::Stream(_))
    }

    /// False when the receiver has closed or broken the connection (checked without blocking).
    pub fn healthy(&mut self) -> bool {
        match self {
            Transport::Stream(t) => t.healthy(),
            _ => true,
        }
    }

    /// Drops any connection, so the next send reconnects.
    pub fn reset(&mut self) {
        if let Transport::Stream(t) = self {
            t.conn = None;
        }
        if let Transport::Udp(t) = self {
            t.socket = None;
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(b),
            Conn::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Syslog over a TCP or TLS stream, reconnecting on failure.
pub struct StreamTransport {
    address: String,
    framing: Framing,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    conn: Option<Conn>,
    buf: Vec<u8>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl StreamTransport {
    /// A transport to `address` (`host:port`); `tls` set for TLS.
    pub fn new(
        address: &str,
        framing: Framing,
        tls: Option<&TlsSettings>,
    ) -> Result<StreamTransport, TransportError> {
        let tls = match tls {
            Some(t) => {
                let host = t.server_name.clone().unwrap_or_else(|| host_of(address));
                let name = ServerName::try_from(host)
                    .map_err(|e| TransportError::Tls(format!("server name: {e}")))?;
                Some((t.client_config()?, name))
            }
            None => None,
        };
        Ok(StreamTransport {
            address: address.into(),
            framing,
            tls,
            conn: None,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    fn connect(&self) -> Result<Conn, TransportError> {
        let what = || format!("connect {}", self.address);
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(io_err(what()))?
            .next()
            .ok_or_else(|| io_err(what())(io::Error::other("no address")))?;
        let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(io_err(what()))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(io_err(what()))?;
        let _ = s.set_nodelay(true);
        Ok(match &self.tls {
            None => Conn::Plain(s),
            Some((cfg, name)) => {
                let c = rustls::ClientConnection::new(cfg.clone(), name.clone())
                    .map_err(|e| TransportError::Tls(e.to_string()))?;
                let mut st = rustls::StreamOwned::new(c, s);
                // Complete the handshake now, so certificate errors surface here.
                while st.conn.is_handshaking() {
                    st.conn
                        .complete_io(&mut st.sock)
                        .map_err(|e| TransportError::Tls(format!("{}: {e}", self.address)))?;
                }
                Conn::Tls(Box::new(st))
            }
        })
    }

    /// Checks the connection without blocking: a syslog receiver never sends application data,
    /// so end of stream, data on a plain connection, a TLS close_notify or an error all mean the
    /// connection is gone. TLS records the server sends on its own (session tickets) are read and
    /// processed.
    fn healthy(&mut self) -> bool {
        let ok = match &mut self.conn {
            None => return true,
            Some(Conn::Plain(s)) => {
                let mut b = [0u8; 1];
                s.set_nonblocking(true).is_ok()
                    && matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                    && s.set_nonblocking(false).is_ok()
            }
            Some(Conn::Tls(st)) => {
                let st = &mut **st;
                let mut ok = st.sock.set_nonblocking(true).is_ok();
                while ok {
                    match st.conn.read_tls(&mut st.sock) {
                        Ok(0) => ok = false,
                        Ok(_) => match st.conn.process_new_packets() {
                            Ok(io) if io.peer_has_closed() => ok = false,
                            Ok(io) => {
                                let mut sink = vec![0u8; io.plaintext_bytes_to_read()];
                                let _ = io::Read::read(&mut st.conn.reader(), &mut sink);
                            }
                            Err(_) => ok = false,
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => ok = false,
                    }
                }
                ok && st.sock.set_nonblocking(false).is_ok()
            }
        };
        if !ok {
            self.conn = None;
        }
        ok
    }

    fn send(&mut self, msgs: &[&[u8]]) -> Result<(), (usize, TransportError)> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().map_err(|e| (0, e))?);
        }
        self.buf.clear();
        for m in msgs {
            frame(self.framing, m, &mut self.buf);
        }
        let what = format!("send to {}", self.address);
        let r = match self.conn.as_mut() {
            Some(c) => c.write_all(&self.buf).and_then(|_| c.flush()),
            None => Ok(()),
        };
        r.map_err(|e| {
            self.conn = None;
            (0, io_err(what)(e))
        })
    }
}

fn host_of(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => address.to_string(),
    }
}

/// Syslog over UDP: one message per datagram.
pub struct UdpTransport {
    address: String,
    socket: Option<UdpSocket>,
}

impl UdpTransport {
    /// A transport to `address` (`host:port`).
    pub fn new(address: &str) -> UdpTransport {
        UdpTransport {
            address: address.into(),
            socket: None,
        }
    }

    fn send(&mut self, msgs: &[&[u8]]) -> Result<(), (usize, TransportError)> {
        let what = || format!("udp {}", self.address);
        if self.socket.is_none() {
            let s = UdpSocket::bind(("0.0.0.0", 0))
                .and_then(|s| s.connect(&self.address).map(|_| s))
                .map_err(|e| (0, io_err(what())(e)))?;
            self.socket = Some(s);
        }
        let Some(s) = &self.socket else {
            return Ok(());
        };
        for (i, m) in msgs.iter().enumerate() {
            s.send(m).map_err(|e| (i, io_err(what())(e)))?;
        }
        Ok(())
    }
}

/// Lines appended to a file; at `max_bytes` the file is renamed `.1` (older ones shift up to
/// `.keep`) and a new one started.
pub struct FileTransport {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<(File, u64)>,
}

impl FileTransport {
    /// A transport appending to `path`.
    pub fn new(path: &Path, max_bytes: u64, keep: u32) -> FileTransport {
        FileTransport {
            path: path.into(),
            max_bytes: max_bytes.max(1),
            keep,
            file: None,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))
    }

    fn open(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            if let Some(d) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let len = f.metadata()?.len();
            self.file = Some((f, len));
        }
        Ok(())
    }

    fn send(&mut self, msgs: &[&[u8]]) -> Result<(), (usize, TransportError)> {
        let what = format!("write {}", self.path.display());
        for (i, m) in msgs.iter().enumerate() {
            let r = (|| -> io::Result<()> {
                self.open()?;
                if let Some((_, len)) = &self.file {
                    if *len > 0 && len + m.len() as u64 + 1 > self.max_bytes {
                        self.rotate()?;
                        self.open()?;
                    }
                }
                if let Some((f, len)) = self.file.as_mut() {
                    f.write_all(m)?;
                    f.write_all(b"\n")?;
                    *len += m.len() as u64 + 1;
                }
                Ok(())
            })();
            r.map_err(|e| {
                self.file = None;
                (i, io_err(what.clone())(e))
            })?;
        }
        if let Some((f, _)) = self.file.as_mut() {
            f.flush().map_err(|e| (msgs.len(), io_err(what)(e)))?;
        }
        Ok(())
    }
}

/// Messages on a Kafka topic through an idempotent producer; a batch counts as delivered once
/// every message in it is acknowledged.
pub struct KafkaTransport {
    topic: String,
    producer: crate::sink::kafka::KafkaSink,
}

impl KafkaTransport {
    /// A producer for `topic` with the daemon's brokers and options (the daemon's own producer
    /// type: the same idempotence, queue-full policy and acknowledgement wait).
    pub fn new(
        brokers: &str,
        options: &std::collections::BTreeMap<String, String>,
        topic: &str,
    ) -> Result<KafkaTransport, TransportError> {
        Ok(KafkaTransport {
            topic: topic.into(),
            producer: crate::sink::kafka::KafkaSink::new(brokers, options)?,
        })
    }

    /// Sends the batch and waits up to 30 s for the broker's acknowledgement; on failure none
    /// counts as sent (what was waiting is withdrawn) and the batch stays spooled.
    fn send(&mut self, msgs: &[&[u8]]) -> Result<(), (usize, TransportError)> {
        for m in msgs {
            self.producer
                .send(&self.topic, None, m, None)
                .map_err(|e| (0, e.into()))?;
        }
        self.producer
            .settle_within(Duration::from_secs(30))
            .map_err(|e| (0, e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_transport_rotates_by_size_and_keeps_n_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cef.log");
        let mut t = FileTransport::new(&p, 6, 2);
        for m in [b"aaaa", b"bbbb", b"cccc", b"dddd"] {
            t.send(&[m]).unwrap();
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(p.clone()), "dddd\n");
        assert_eq!(read(d.path().join("cef.log.1")), "cccc\n");
        assert_eq!(read(d.path().join("cef.log.2")), "bbbb\n");
        assert!(!d.path().join("cef.log.3").exists());
    }

    #[test]
    fn stream_transport_frames_with_octet_counts_and_reconnects() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut t = StreamTransport::new(&addr, Framing::OctetCounting, None).unwrap();
        t.send(&[b"ab", "é".as_bytes()]).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = vec![0u8; 8];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, b"2 ab2 \xc3\xa9");
        drop(s);
        drop(l);
        // The receiver is gone: sending fails (maybe only on the second write), then reconnect
        // attempts fail until a receiver is back.
        let mut failed = false;
        for _ in 0..3 {
            if t.send(&[b"x"]).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
