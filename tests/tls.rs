//! The amqps listener: lapin, through a local proxy that speaks TLS to the
//! broker (tokio-rustls trusting a CA generated for the test with rcgen),
//! publishes with confirms and consumes; the plain listener
//! keeps working beside it; clients that do not speak TLS, that distrust the
//! certificate or that never finish the handshake are dropped without harm;
//! client certificates are checked when `verify_peer` is on; bad certificate
//! files stop the broker at start; SIGTERM closes TLS clients with 320.
//!
//! These tests start their own broker (a TLS config); they do nothing against
//! an external broker.
//!
//! Why not lapin's own TLS: its rustls features pull p12-keystore/x509-parser,
//! whose proc-macros add a feature to `syn`, which rebuilds bindgen and so
//! RocksDB's C++ (15+ minutes here) in every build cache. The proxy gives lapin
//! the same TLS path without that; the raw client runs over TLS directly.

mod common;

use common::raw::{self, RawClient, ReadError, PROTOCOL_HEADER};
use common::*;
use lapin::BasicProperties;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A CA, a server certificate it signs (for localhost and 127.0.0.1) and a
/// client certificate it signs, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = ca("hopper test CA");
        let (server_cert, server_key) = leaf(&ca, "localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert_pem, client_key_pem) = leaf(
            &ca,
            "hopper-test-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let pki = Pki {
            dir,
            ca_pem: ca.pem(),
            client_cert_pem,
            client_key_pem,
        };
        std::fs::write(pki.path("server.pem"), server_cert).expect("write cert");
        std::fs::write(pki.path("server.key"), server_key).expect("write key");
        std::fs::write(pki.path("ca.pem"), &pki.ca_pem).expect("write ca");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The default config plus a `[tls]` section on a free port, then `extra` lines.
    fn config(&self, extra: &str) -> tempfile::NamedTempFile {
        let text = format!(
            "{}\n[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n{extra}\n",
            hopper::config::DEFAULT_CONFIG,
            self.path("server.pem"),
            self.path("server.key"),
        );
        let file = tempfile::NamedTempFile::new().expect("temp config");
        std::fs::write(file.path(), text).expect("write config");
        file
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca cert")
}

/// (certificate PEM, PKCS#8 key PEM) signed by `ca`.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()])
        .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

/// A broker with `[tls]` (plus `extra` config lines); `None` against an external broker.
fn tls_broker(pki: &Pki, extra: &str) -> Option<(Broker, tempfile::NamedTempFile)> {
    tls_broker_replacing(pki, extra, &[])
}

/// Like `tls_broker`, replacing text of the config first.
fn tls_broker_replacing(
    pki: &Pki,
    extra: &str,
    replace: &[(&str, &str)],
) -> Option<(Broker, tempfile::NamedTempFile)> {
    if std::env::var(EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        eprintln!("skipped: needs a broker started with a [tls] config");
        return None;
    }
    let config = pki.config(extra);
    let mut text = std::fs::read_to_string(config.path()).expect("read config");
    for (old, new) in replace {
        assert!(text.contains(old), "{old} not in the config");
        text = text.replace(old, new);
    }
    std::fs::write(config.path(), text).expect("write config");
    let path = config.path().to_str().expect("utf-8 path").to_string();
    Some((Broker::start_with_args(&["--config", &path]), config))
}

/// A client certificate and its key, PEM.
type Identity = (String, String);

/// A TLS connection to `addr` for server name "localhost", trusting `ca_pem`.
async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Identity>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key PEM");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client identity")
        }
    };
    let tcp = within("tcp connect", TcpStream::connect(addr))
        .await
        .expect("tcp connect");
    let name = ServerName::try_from("localhost").expect("server name");
    within(
        "TLS handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
}

/// Whether an AMQP handshake gets as far as connection.start over `tls` (a
/// server that rejects the client's certificate closes the stream instead).
async fn amqp_start_arrives(tls: TlsStream<TcpStream>) -> bool {
    let mut raw = RawClient::over(tls);
    raw.send(PROTOCOL_HEADER).await;
    match raw.read_frame(WAIT).await {
        Ok(f) => f.ids() == Some((10, 10)),
        Err(ReadError::Closed) => false,
        Err(e) => panic!("neither connection.start nor a close: {e:?}"),
    }
}

/// A plain-TCP listener that relays every connection to the broker's amqps
/// port over TLS: lapin connects to it with `amqp://` and its frames reach
/// the broker inside TLS.
async fn tls_proxy(tls_addr: SocketAddr, ca_pem: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let ca_pem = ca_pem.to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let ca_pem = ca_pem.clone();
            tokio::spawn(async move {
                // A failed TLS connect drops the client, which fails lapin's connect.
                if let Ok(mut server) = tls_connect(tls_addr, &ca_pem, None).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn publish_with_confirms_and_consume_over_tls_beside_plain() {
    let pki = Pki::new();
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    assert_ne!(broker.tls_addr(), broker.addr());
    let proxy = tls_proxy(broker.tls_addr(), &pki.ca_pem).await;
    let conn = connect_uri(&format!("amqp://guest:guest@{proxy}/%2f"))
        .await
        .expect("lapin over TLS");
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    let q = declare_queue(&ch, "tls").await;
    confirm_select(&ch).await;
    for i in 0..20 {
        let body = format!("tls {i}");
        let c = publish_confirmed(&ch, "", &q, body.as_bytes(), BasicProperties::default()).await;
        assert!(c.is_ack(), "publish over TLS not acked: {c:?}");
    }
    // A large body crosses several TLS records and AMQP body frames.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let c = publish_confirmed(&ch, "", &q, &big, BasicProperties::default()).await;
    assert!(c.is_ack());
    // The plain listener serves the same broker: publish there, consume over TLS.
    let (plain, pch) = connect_channel(&broker).await;
    confirm_select(&pch).await;
    let c = publish_confirmed(&pch, "", &q, b"plain", BasicProperties::default()).await;
    assert!(c.is_ack());
    let mut consumer = consume(&ch, &q, false).await;
    for i in 0..20 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, format!("tls {i}").as_bytes());
        within("ack", d.acker.ack(Default::default()))
            .await
            .expect("ack");
    }
    let d = next_delivery(&mut consumer).await;
    assert!(d.data == big, "large body changed over TLS");
    within("ack", d.acker.ack(Default::default()))
        .await
        .expect("ack");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"plain");
    within("ack", d.acker.ack(Default::default()))
        .await
        .expect("ack");
    let _ = within("close", plain.close(200, "bye".into())).await;
    let _ = within("close", conn.close(200, "bye".into())).await;
}

#[tokio::test]
async fn plain_amqp_on_the_tls_port_is_dropped() {
    let pki = Pki::new();
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    let mut raw = RawClient::connect(broker.tls_addr()).await;
    raw.send(PROTOCOL_HEADER).await;
    // Whatever TLS alert comes back, the socket must then close.
    raw.expect_closed(WAIT).await;
    // Nothing else suffered: both listeners still serve.
    assert_broker_healthy(&broker).await;
    let tls = tls_connect(broker.tls_addr(), &pki.ca_pem, None)
        .await
        .expect("TLS after a bad client");
    let mut raw = RawClient::over(tls);
    raw.handshake_on(raw::Auth::Plain("guest", "guest"), 0, "/")
        .await;
    raw.close().await;
    assert!(
        broker.log().contains("TLS handshake failed"),
        "the failed handshake should be logged"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_cannot_connect() {
    let pki = Pki::new();
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    let other = ca("some other CA");
    let res = tls_connect(broker.tls_addr(), &other.pem(), None).await;
    let Err(err) = res else {
        panic!("a client trusting another CA must fail the handshake");
    };
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let tls = tls_connect(broker.tls_addr(), &pki.ca_pem, None)
        .await
        .expect("TLS with the right CA");
    assert!(amqp_start_arrives(tls).await);
}

#[tokio::test]
async fn a_silent_tls_client_does_not_stall_accepts() {
    let pki = Pki::new();
    // handshake_timeout stays at its default (10 s): far longer than WAIT, so
    // the handshake below only finishes in time if accepting goes on meanwhile.
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    let silent = within("tcp connect", TcpStream::connect(broker.tls_addr()))
        .await
        .expect("connect");
    let tls = tls_connect(broker.tls_addr(), &pki.ca_pem, None)
        .await
        .expect("TLS while another client sits in its handshake");
    let mut raw = RawClient::over(tls);
    raw.handshake_on(raw::Auth::Plain("guest", "guest"), 0, "/")
        .await;
    raw.close().await;
    drop(silent);
}

#[tokio::test]
async fn an_unfinished_tls_handshake_times_out() {
    let pki = Pki::new();
    let Some((mut broker, _config)) = tls_broker_replacing(
        &pki,
        "",
        &[("handshake_timeout = 10", "handshake_timeout = 1")],
    ) else {
        return;
    };
    let mut raw = RawClient::connect(broker.tls_addr()).await;
    // Sends nothing: the broker must give up on it and close the socket.
    raw.expect_closed(WAIT).await;
    assert!(
        broker.log().contains("TLS handshake not finished"),
        "the timeout should be logged: {}",
        broker.log()
    );
}

#[tokio::test]
async fn client_certificates_are_required_with_verify_peer() {
    let pki = Pki::new();
    let extra = format!(
        "ca_file = {:?}\nverify_peer = true\nfail_if_no_peer_cert = true",
        pki.path("ca.pem")
    );
    let Some((mut broker, _config)) = tls_broker(&pki, &extra) else {
        return;
    };
    let addr = broker.tls_addr();
    // (With TLS 1.3 the client may finish its side of the handshake before the
    // server has judged its certificate: the refusal then shows on first read.)
    let refused = |res: std::io::Result<TlsStream<TcpStream>>| async move {
        match res {
            Err(_) => true,
            Ok(tls) => !amqp_start_arrives(tls).await,
        }
    };
    assert!(
        refused(tls_connect(addr, &pki.ca_pem, None).await).await,
        "a client without a certificate must be refused"
    );
    let other = ca("untrusted client CA");
    let intruder = leaf(&other, "intruder", ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        refused(tls_connect(addr, &pki.ca_pem, Some(&intruder)).await).await,
        "a client certificate of another CA must be refused"
    );
    let ours = (pki.client_cert_pem.clone(), pki.client_key_pem.clone());
    let tls = tls_connect(addr, &pki.ca_pem, Some(&ours))
        .await
        .expect("a client certificate signed by ca_file is accepted");
    let mut raw = RawClient::over(tls);
    raw.handshake_on(raw::Auth::Plain("guest", "guest"), 0, "/")
        .await;
    raw.close().await;
    assert!(broker.log().contains("TLS handshake failed"));
}

#[tokio::test]
async fn the_connection_limit_counts_tls_and_plain_clients_together() {
    let pki = Pki::new();
    let Some((mut broker, _config)) =
        tls_broker_replacing(&pki, "", &[("max_connections = 0", "max_connections = 1")])
    else {
        return;
    };
    let tls = tls_connect(broker.tls_addr(), &pki.ca_pem, None)
        .await
        .expect("TLS connect");
    let mut first = RawClient::over(tls);
    first
        .handshake_on(raw::Auth::Plain("guest", "guest"), 0, "/")
        .await;
    // The one allowed connection is the TLS one: a plain socket is refused.
    let mut second = RawClient::connect(broker.addr()).await;
    second.send(PROTOCOL_HEADER).await;
    second.expect_closed(WAIT).await;
    first.close().await;
}

#[tokio::test]
async fn sigterm_closes_tls_clients_with_320() {
    let pki = Pki::new();
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    let tls = tls_connect(broker.tls_addr(), &pki.ca_pem, None)
        .await
        .expect("TLS connect");
    let mut raw = RawClient::over(tls);
    raw.handshake_on(raw::Auth::Plain("guest", "guest"), 0, "/")
        .await;
    let term = tokio::task::spawn_blocking(move || broker.terminate());
    let close = raw.read_connection_close().await;
    assert_eq!(close.code, 320, "{close:?}");
    assert!(term.await.expect("join"), "the broker must exit 0");
}

/// Run the binary with `args` and expect it to refuse to start; its stderr.
fn refused_start(args: &[&str]) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--management-listen",
            "off",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(data.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hopper");
    assert!(!out.status.success(), "hopper must refuse to start");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "hopper must not listen"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_certificate_files_stop_the_broker_at_start() {
    let pki = Pki::new();
    // A missing certificate file.
    let config = pki.config("");
    let text = std::fs::read_to_string(config.path())
        .expect("read")
        .replace("server.pem", "missing.pem");
    std::fs::write(config.path(), text).expect("write");
    let err = refused_start(&["--config", config.path().to_str().expect("utf-8")]);
    assert!(
        err.contains("cert_file") && err.contains("missing.pem"),
        "{err}"
    );
    // A key file that holds a certificate instead of a key.
    let config = pki.config("");
    let text = std::fs::read_to_string(config.path())
        .expect("read")
        .replace("server.key", "ca.pem");
    std::fs::write(config.path(), text).expect("write");
    let err = refused_start(&["--config", config.path().to_str().expect("utf-8")]);
    assert!(
        err.contains("key_file") && err.contains("private key"),
        "{err}"
    );
    // --tls-listen without a [tls] section.
    let err = refused_start(&["--tls-listen", "127.0.0.1:0"]);
    assert!(err.contains("[tls]"), "{err}");
}
