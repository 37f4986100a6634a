//! The amqps listener: lapin over TLS (rustls, trusting a CA generated for the
//! test with rcgen) publishes with confirms and consumes; the plain listener
//! keeps working beside it; clients that do not speak TLS, that distrust the
//! certificate or that never finish the handshake are dropped without harm;
//! client certificates are checked when `verify_peer` is on; bad certificate
//! files stop the broker at start; SIGTERM closes TLS clients with 320.
//!
//! These tests start their own broker (a TLS config); they do nothing against
//! an external broker.

mod common;

use common::raw::{RawClient, PROTOCOL_HEADER};
use common::*;
use futures::StreamExt;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
        let (client_cert_pem, client_key_pem) =
            leaf(&ca, "hopper-test-client", ExtendedKeyUsagePurpose::ClientAuth);
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

fn tls_config(ca_pem: &str, identity: Option<OwnedIdentity>) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity,
        cert_chain: Some(ca_pem.to_string()),
    }
}

async fn connect_tls(broker: &mut Broker, tls: OwnedTLSConfig) -> lapin::Result<Connection> {
    let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f", broker.tls_addr().port());
    let runtime = lapin::runtime::default_runtime()?;
    within(
        "lapin amqps connect",
        Connection::connect_with_config(&uri, ConnectionProperties::default(), tls, runtime),
    )
    .await
}

#[tokio::test]
async fn publish_with_confirms_and_consume_over_tls_beside_plain() {
    let pki = Pki::new();
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    assert_ne!(broker.tls_addr(), broker.addr());
    let conn = connect_tls(&mut broker, tls_config(&pki.ca_pem, None))
        .await
        .expect("amqps connect");
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
    let big = vec![7u8; 300_000];
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
    assert_eq!(d.data.len(), big.len());
    assert!(d.data == big);
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
    let conn = connect_tls(&mut broker, tls_config(&pki.ca_pem, None))
        .await
        .expect("amqps connect after a bad client");
    let _ = within("close", conn.close(200, "bye".into())).await;
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
    let res = connect_tls(&mut broker, tls_config(&other.pem(), None)).await;
    assert!(
        res.is_err(),
        "a client trusting another CA must fail the handshake"
    );
    let conn = connect_tls(&mut broker, tls_config(&pki.ca_pem, None))
        .await
        .expect("amqps connect with the right CA");
    let _ = within("close", conn.close(200, "bye".into())).await;
}

#[tokio::test]
async fn a_silent_tls_client_does_not_stall_accepts() {
    let pki = Pki::new();
    // handshake_timeout stays at its default (10 s): far longer than WAIT, so
    // the connect below only succeeds in time if accepting goes on meanwhile.
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    let silent = within(
        "tcp connect",
        tokio::net::TcpStream::connect(broker.tls_addr()),
    )
    .await
    .expect("connect");
    let conn = connect_tls(&mut broker, tls_config(&pki.ca_pem, None))
        .await
        .expect("amqps connect while another client sits in its handshake");
    let _ = within("close", conn.close(200, "bye".into())).await;
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
        "the timeout should be logged"
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
    let res = connect_tls(&mut broker, tls_config(&pki.ca_pem, None)).await;
    assert!(res.is_err(), "no client certificate must be refused");
    // A certificate from another CA is refused too.
    let other = ca("untrusted client CA");
    let (cert, key) = leaf(&other, "intruder", ExtendedKeyUsagePurpose::ClientAuth);
    let identity = OwnedIdentity::PKCS8 {
        pem: cert.into_bytes(),
        key: key.into_bytes(),
    };
    let res = connect_tls(&mut broker, tls_config(&pki.ca_pem, Some(identity))).await;
    assert!(res.is_err(), "a client certificate of another CA must be refused");
    let identity = OwnedIdentity::PKCS8 {
        pem: pki.client_cert_pem.clone().into_bytes(),
        key: pki.client_key_pem.clone().into_bytes(),
    };
    let conn = connect_tls(&mut broker, tls_config(&pki.ca_pem, Some(identity)))
        .await
        .expect("a client certificate signed by ca_file is accepted");
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    let q = declare_queue(&ch, "mtls").await;
    assert_eq!(message_count(&ch, &q).await, 0);
    let _ = within("close", conn.close(200, "bye".into())).await;
}

#[tokio::test]
async fn sigterm_closes_tls_clients_with_320() {
    let pki = Pki::new();
    let Some((mut broker, _config)) = tls_broker(&pki, "") else {
        return;
    };
    let conn = connect_tls(&mut broker, tls_config(&pki.ca_pem, None))
        .await
        .expect("amqps connect");
    let mut events = conn.events_listener();
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    let q = declare_queue(&ch, "tls-shutdown").await;
    assert_eq!(message_count(&ch, &q).await, 0);
    let term = tokio::task::spawn_blocking(move || broker.terminate());
    let code = within("connection error event", async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => break reply_code(&e),
                Some(_) => continue,
                None => break None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(320), "TLS clients must get connection.close 320");
    assert!(term.await.expect("join"), "the broker must exit 0");
}

/// Run the binary with `args` and expect it to refuse to start; its stderr.
fn refused_start(args: &[&str]) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
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
