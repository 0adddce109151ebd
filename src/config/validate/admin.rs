//! Checks of the `[admin]` table: token values are read from their
//! environment variables or files, a non-loopback API must have tokens,
//! and TLS files are loaded now so `firedrill check` points at a bad one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::{check_name, raw, resolve, Report};
use crate::config::{Admin, AdminTls, Secret, Token, DEFAULT_ADMIN_LISTEN};
use crate::tls::{self, TlsError};

pub(super) fn admin(raw: &raw::Admin, base: &Path, report: Report<'_>) -> Admin {
    let listen: SocketAddr = raw.listen.as_ref().map_or_else(
        || {
            DEFAULT_ADMIN_LISTEN
                .parse()
                .expect("default admin address parses")
        },
        |l| *l.get_ref(),
    );
    let loopback = listen.ip().to_canonical().is_loopback();
    if let (false, true, Some(span)) = (
        loopback,
        raw.tokens.is_empty(),
        raw.listen.as_ref().map(Spanned::span),
    ) {
        report(
            span,
            format!(
                "the admin API listens on {listen}, which is not loopback, but [admin] has no tokens, \
                 so anyone who reaches it could start a blackout; add \
                 tokens = [{{ name = \"gameday-lead\", value_env = \"FIREDRILL_TOKEN\" }}] to [admin], \
                 or listen on 127.0.0.1"
            ),
        );
    }
    let mut tokens: Vec<Token> = Vec::new();
    let mut names: HashMap<&str, Range<usize>> = HashMap::new();
    for raw_token in &raw.tokens {
        let name = &raw_token.get_ref().name;
        check_name("token", name, report);
        if names.insert(name.get_ref(), name.span()).is_some() {
            report(
                name.span(),
                format!(
                    "token name `{}` is used twice; give each token its own name",
                    name.get_ref()
                ),
            );
        }
        let Some(value) = value(raw_token, loopback, base, report) else {
            continue;
        };
        if let Some(twin) = tokens.iter().find(|t| t.value == value) {
            report(
                raw_token.span(),
                format!(
                    "token `{}` has the same value as token `{}`; give each token its own value, \
                     so the audit log can tell callers apart",
                    name.get_ref(),
                    twin.name
                ),
            );
            continue;
        }
        tokens.push(Token {
            name: name.get_ref().as_str().into(),
            value,
        });
    }
    Admin {
        listen,
        tokens,
        open_reads: raw.open_reads,
        tls: raw.tls.as_ref().and_then(|t| self::tls(t, base, report)),
    }
}

/// Reads a token's value from its one source; `None` after reporting why not.
fn value(
    raw: &Spanned<raw::Token>,
    loopback: bool,
    base: &Path,
    report: Report<'_>,
) -> Option<Secret> {
    let token = raw.get_ref();
    let name = token.name.get_ref();
    let (span, value) = match (&token.value_env, &token.value_file, &token.value) {
        (Some(var), None, None) => {
            let value = match std::env::var(var.get_ref()) {
                Ok(value) => value,
                Err(std::env::VarError::NotPresent) => {
                    report(
                        var.span(),
                        format!(
                            "token `{name}`: environment variable `{}` is not set; \
                             export it before starting firedrill",
                            var.get_ref()
                        ),
                    );
                    return None;
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    report(
                        var.span(),
                        format!(
                            "token `{name}`: environment variable `{}` is not valid UTF-8",
                            var.get_ref()
                        ),
                    );
                    return None;
                }
            };
            (var.span(), value)
        }
        (None, Some(file), None) => {
            let path = resolve(base, file.get_ref());
            match std::fs::read_to_string(&path) {
                // Files written by `echo` or an editor end in a newline.
                Ok(text) => (file.span(), text.trim_end_matches(['\n', '\r']).to_owned()),
                Err(e) => {
                    report(
                        file.span(),
                        format!(
                            "token `{name}`: cannot read value_file {}: {e}",
                            path.display()
                        ),
                    );
                    return None;
                }
            }
        }
        (None, None, Some(inline)) => {
            if !loopback {
                report(
                    inline.span(),
                    format!(
                        "token `{name}` has an inline value, which is only accepted while the admin API \
                         listens on loopback; use value_env = \"VAR\" or value_file = \"path\""
                    ),
                );
                return None;
            }
            (inline.span(), inline.get_ref().expose().to_owned())
        }
        (None, None, None) => {
            report(
                raw.span(),
                format!(
                    "token `{name}` has no value; add value_env = \"VAR\" (an environment variable) \
                     or value_file = \"path\""
                ),
            );
            return None;
        }
        _ => {
            report(
                raw.span(),
                format!(
                    "token `{name}` sets more than one of value_env, value_file and value; keep one"
                ),
            );
            return None;
        }
    };
    if value.is_empty() {
        report(
            span,
            format!("token `{name}` has an empty value; a token needs a long random value"),
        );
        return None;
    }
    // Anything else could not be sent in an `Authorization` header.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        report(
            span,
            format!(
                "token `{name}`'s value holds spaces or characters other than printable ASCII, \
                 which an `Authorization: Bearer` header cannot carry"
            ),
        );
        return None;
    }
    Some(Secret::new(value))
}

/// Loads the admin certificate, key and client CA now, so a bad file is a
/// plan error at the setting that names it.
fn tls(raw: &Spanned<raw::AdminTls>, base: &Path, report: Report<'_>) -> Option<AdminTls> {
    let settings = raw.get_ref();
    let cert = resolve(base, settings.cert.get_ref());
    let key = resolve(base, settings.key.get_ref());
    let client_ca = settings
        .client_ca
        .as_ref()
        .map(|ca| (resolve(base, ca.get_ref()), ca.span()));
    let ca_path = client_ca.as_ref().map(|(path, _)| path.as_path());
    let read = || {
        // Read and checked one by one, so the first bad file is the one named.
        let cert = tls::read("certificate file", &cert)?;
        tls::certificates("certificate file", &cert)?;
        let key = tls::read("key file", &key)?;
        tls::private_key(&key)?;
        let client_ca = ca_path
            .map(|path| tls::read("client CA file", path))
            .transpose()?;
        tls::server_config_of(&cert, &key, tls::ALPN_HTTP, client_ca.as_ref())?;
        Ok(AdminTls {
            cert,
            key,
            client_ca,
        })
    };
    match read() {
        Ok(settings) => Some(settings),
        Err(e) => {
            let file: Option<&PathBuf> = match &e {
                TlsError::Read { path, .. }
                | TlsError::Empty { path, .. }
                | TlsError::Pem { path, .. } => Some(path),
                TlsError::Rustls(_) => None,
            };
            let span = match file {
                Some(path) if *path == cert => settings.cert.span(),
                Some(path) if *path == key => settings.key.span(),
                Some(path) if Some(path.as_path()) == ca_path => client_ca
                    .as_ref()
                    .map_or(raw.span(), |(_, span)| span.clone()),
                _ => raw.span(),
            };
            report(span, format!("[admin] tls: {e}"));
            None
        }
    }
}
