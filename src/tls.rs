//! TLS settings shared by the admin API and the data plane: PEM files read
//! into [`Pem`] data at validation, rustls configurations built from that
//! data when a listener or upstream connection needs one. Every failure
//! names the file and what is wrong with it, so `firedrill check` can
//! point at the plan line.
//!
//! rustls runs on the `ring` provider, chosen per configuration rather than
//! installed process-wide, so embedding firedrill never fights over it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::topology::{ListenerTls, Pem, UpstreamTls};

/// ALPN protocols an HTTP listener offers, most preferred first.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN an upstream connection offers: firedrill speaks HTTP/1.1 upstream.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM {expected}", path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {} is not valid PEM: {message}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Rustls(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(what: &'static str, path: &Path, error: rustls::pki_types::pem::Error) -> TlsError {
    match error {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        },
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "item",
        },
        other => TlsError::Pem {
            what,
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Reads a PEM file the plan names into [`Pem`] data.
pub fn read(what: &'static str, path: &Path) -> Result<Pem, TlsError> {
    let text = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    Ok(Pem {
        path: path.to_owned(),
        text: text.into(),
    })
}

/// Every certificate in PEM text; at least one.
pub fn certificates(
    what: &'static str,
    pem: &Pem,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = pem.path.as_path();
    let certs = CertificateDer::pem_slice_iter(&pem.text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in PEM text.
pub fn private_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = pem.path.as_path();
    PrivateKeyDer::from_pem_slice(&pem.text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "key file",
            path: path.to_owned(),
            expected: "PRIVATE KEY",
        },
        other => pem_error("key file", path, other),
    })
}

/// A root store holding every certificate of a PEM CA bundle.
pub fn root_store(what: &'static str, pem: &Pem) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(what, pem)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what,
            path: pem.path.clone(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The certificates the operating system trusts, read once: a service
/// started later trusts what the first one did.
pub fn system_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!("while loading the system's CA certificates: {error}");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system CA certificates loaded");
            roots
        })
        .clone()
}

/// A server configuration from the certificate chain and key in PEM
/// files; with `client_ca`, clients must present a certificate signed by
/// it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    // Read and checked one by one, so the first bad file is the one named.
    let cert = read("certificate file", cert)?;
    certificates("certificate file", &cert)?;
    let key = read("key file", key)?;
    private_key(&key)?;
    let client_ca = client_ca
        .map(|path| read("client CA file", path))
        .transpose()?;
    server_config_of(&cert, &key, alpn, client_ca.as_ref())
}

/// A server configuration from a certificate chain and key; with
/// `client_ca`, clients must present a certificate signed by it.
pub fn server_config_of(
    cert: &Pem,
    key: &Pem,
    alpn: &[&[u8]],
    client_ca: Option<&Pem>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("certificate file", cert)?;
    let key_der = private_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = root_store("client CA file", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Rustls(format!("client CA {}: {e}", ca.path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| {
        TlsError::Rustls(format!(
            "certificate {} and key {} do not form a usable pair: {e}",
            cert.path.display(),
            key.path.display()
        ))
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The configuration a listener terminates TLS with.
pub fn listener_config(tls: &ListenerTls) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_of(&tls.cert, &tls.key, tls.alpn, None)
}

/// How to speak TLS to an upstream: its trust and ALPN built into a
/// rustls configuration, and the name to send and verify.
#[derive(Debug, Clone)]
pub struct UpstreamConnector {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl UpstreamConnector {
    /// Builds what `tls` describes.
    pub fn new(tls: &UpstreamTls) -> Result<UpstreamConnector, TlsError> {
        let config = match (&tls.ca, tls.skip_verify) {
            (_, true) => client_config_unverified(tls.alpn)?,
            (Some(ca), false) => client_config(root_store("upstream CA file", ca)?, tls.alpn)?,
            (None, false) => client_config(system_roots(), tls.alpn)?,
        };
        Ok(UpstreamConnector {
            config,
            server_name: tls.server_name.clone(),
        })
    }

    /// The TLS handshake over `stream`, with this trust and server name:
    /// what the proxy and `firedrill check --probe` both do.
    pub async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// A client configuration trusting `roots`, verifying as usual.
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration that accepts any server certificate. Handshake
/// signatures are still checked, so the peer holds the key of the
/// certificate it shows; who that certificate names is not.
pub fn client_config_unverified(alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate(Arc::clone(&provider)));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The verifier behind `upstream_skip_verify = true`.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
