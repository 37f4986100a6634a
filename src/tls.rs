//! TLS for the `amqps` listener: builds the rustls server configuration from the
//! `[tls]` section (certificate chain, private key, optional client-certificate
//! verification against a CA bundle) once at start, so a bad file stops the
//! broker before it listens instead of failing every handshake later.
//!
//! Only the `ring` crypto provider is compiled in (no aws-lc: it needs cmake
//! and a long C build). This module never touches sockets: the handshake itself
//! runs in each connection's task (see `server`).

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::Tls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("tls: {what} {path} is not valid PEM: {detail}")]
    Pem {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("tls: {what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("tls: {0}")]
    Rustls(String),
}

/// Build the acceptor for the `[tls]` section: every error names the file and
/// the key at fault.
pub fn acceptor(cfg: &Tls) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs("cert_file", &cfg.cert_file)?;
    let key = load_key(&cfg.key_file)?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = if cfg.verify_peer {
        // validate() guarantees ca_file with verify_peer; checked again here so a
        // hand-built Tls cannot silently skip verification.
        let Some(ca_file) = &cfg.ca_file else {
            return Err(TlsError::Rustls(
                "verify_peer = true needs ca_file (the CAs that sign client certificates)".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        for cert in load_certs("ca_file", ca_file)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::Rustls(format!("ca_file {}: {e}", ca_file.display())))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        // RabbitMQ's fail_if_no_peer_cert = false asks for a certificate but
        // lets clients without one in; a certificate that is sent must verify.
        let verifier = if cfg.fail_if_no_peer_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Rustls(format!("client certificate verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    // Checks that the key parses and matches the first certificate's public key.
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Rustls(format!(
            "cert_file {} and key_file {}: {e}",
            cfg.cert_file.display(),
            cfg.key_file.display()
        ))
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        what,
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Every certificate in a PEM file, in order (the server's first, then its chain).
fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
            expected: "CERTIFICATE section",
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA
/// PRIVATE KEY") or SEC1 ("EC PRIVATE KEY").
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key_file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "key_file",
            path: path.display().to_string(),
            expected: "unencrypted private key (PKCS#8, RSA or EC PEM section)",
        },
        e => pem_error("key_file", path, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tls(cert: PathBuf, key: PathBuf) -> Tls {
        Tls {
            listen: "127.0.0.1:0".into(),
            cert_file: cert,
            key_file: key,
            ca_file: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
        }
    }

    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        assert!(acceptor(&tls(c, k)).is_ok());
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = self_signed();
        let k = write(dir.path(), "k.pem", &key);
        let err = acceptor(&tls(dir.path().join("nope.pem"), k))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cert_file") && err.contains("nope.pem"),
            "{err}"
        );
    }

    #[test]
    fn key_in_cert_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = self_signed();
        let k = write(dir.path(), "k.pem", &key);
        let err = acceptor(&tls(k.clone(), k)).err().unwrap().to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn cert_in_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let c = write(dir.path(), "c.pem", &cert);
        let err = acceptor(&tls(c.clone(), c)).err().unwrap().to_string();
        assert!(err.contains("no unencrypted private key"), "{err}");
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &other_key);
        let err = acceptor(&tls(c, k)).err().unwrap().to_string();
        assert!(err.contains("key_file"), "{err}");
    }

    #[test]
    fn verify_peer_needs_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        let mut t = tls(c.clone(), k);
        t.verify_peer = true;
        assert!(acceptor(&t).is_err());
        t.ca_file = Some(c);
        assert!(acceptor(&t).is_ok());
    }
}
