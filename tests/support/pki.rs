//! Test certificates: a CA ([`authority`]) and certificates it signs
//! ([`leaf`]), and [`Pki`], a CA with a server certificate for 127.0.0.1,
//! a client certificate and one from another CA, written as PEM files
//! beside a plan whose admin API speaks TLS.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use super::TempDir;

/// The PEM files of a test PKI, in a folder of their own.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    /// Writes `ca.pem`, `admin.pem`/`admin.key` (127.0.0.1),
    /// `client.pem`/`client.key` (signed by the CA) and
    /// `stranger.pem`/`stranger.key` (signed by another CA).
    pub fn new() -> Pki {
        let dir = TempDir::new("cli-pki");
        let (ca, issuer) = authority("firedrill cli test CA");
        let (_, other) = authority("some other CA");
        let server = leaf(
            &["127.0.0.1", "localhost"],
            "admin",
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let client = leaf(&[], "runbook", ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let stranger = leaf(&[], "stranger", ExtendedKeyUsagePurpose::ClientAuth, &other);
        for (name, pem) in [
            ("ca.pem", &ca),
            ("admin.pem", &server.0),
            ("admin.key", &server.1),
            ("client.pem", &client.0),
            ("client.key", &client.1),
            ("stranger.pem", &stranger.0),
            ("stranger.key", &stranger.1),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Pki { dir }
    }

    /// The path of one of its files, as a string for an argument.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The `[admin]` `tls` line; clients need a certificate when `mutual`.
    pub fn admin_tls(&self, mutual: bool) -> String {
        let ca = if mutual { ", client_ca = 'ca.pem'" } else { "" };
        format!("tls = {{ cert = 'admin.pem', key = 'admin.key'{ca} }}")
    }
}

/// A self-signed CA: its certificate (PEM) and what signs with it.
pub fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate (PEM) and its key (PEM) signed by `issuer`.
pub fn leaf(
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
