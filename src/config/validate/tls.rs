//! TLS settings of a service: the listener's certificate and key, and how
//! an `https://` upstream is trusted. Files are read into data here and
//! built once to check them, so `check` reports a missing file or a
//! mismatched pair at its line in the plan; the data plane builds its own
//! configurations from that data.

use std::ops::Range;
use std::path::Path;

use rustls::pki_types::ServerName;

use super::{raw, resolve, Report};
use crate::tls::{self, TlsError, UpstreamConnector, ALPN_HTTP, ALPN_HTTP1};
use crate::topology::{ListenerTls, Protocol, Scheme, UpstreamTls};

/// A service's TLS, both ways.
#[derive(Default)]
pub(super) struct ServiceTls {
    pub listener: Option<ListenerTls>,
    pub upstream: Option<UpstreamTls>,
}

/// The listener's certificate and key, read and checked to form a pair.
fn listener(cert: &Path, key: &Path) -> Result<ListenerTls, TlsError> {
    // In the order the errors used to come: a bad certificate first.
    let cert = tls::read("certificate file", cert)?;
    tls::certificates("certificate file", &cert)?;
    let tls = ListenerTls {
        cert,
        key: tls::read("key file", key)?,
        alpn: ALPN_HTTP,
    };
    tls::listener_config(&tls)?;
    Ok(tls)
}

/// Loads and checks the TLS settings of service `name`.
pub(super) fn service_tls(
    name: &str,
    service: &raw::Service,
    base: &Path,
    report: Report<'_>,
) -> ServiceTls {
    let upstream = service.upstream.get_ref();
    let upstream_fields: [(&str, Option<Range<usize>>); 3] = [
        (
            "upstream_ca",
            service.upstream_ca.as_ref().map(|v| v.span()),
        ),
        (
            "upstream_server_name",
            service.upstream_server_name.as_ref().map(|v| v.span()),
        ),
        (
            "upstream_skip_verify",
            service.upstream_skip_verify.as_ref().map(|v| v.span()),
        ),
    ];
    if service.protocol == Protocol::Tcp {
        let tls = ("tls", service.tls.as_ref().map(|v| v.span()));
        for (field, span) in std::iter::once(tls).chain(upstream_fields) {
            if let Some(span) = span {
                report(
                    span,
                    format!(
                        "service `{name}` is tcp, and a tcp service passes TLS through untouched; remove `{field}` and terminate TLS at the upstream"
                    ),
                );
            }
        }
        return ServiceTls::default();
    }
    let listener = service.tls.as_ref().and_then(|spanned| {
        let files = spanned.get_ref();
        let cert = resolve(base, &files.cert);
        let key = resolve(base, &files.key);
        listener(&cert, &key)
            .map_err(|e| report(spanned.span(), format!("service `{name}`: {e}")))
            .ok()
    });
    if upstream.scheme != Scheme::Https {
        for (field, span) in upstream_fields {
            if let Some(span) = span {
                report(
                    span,
                    format!(
                        "service `{name}` sets `{field}`, which only applies to an https upstream; write `upstream = \"https://{}\"` or remove `{field}`",
                        upstream.authority
                    ),
                );
            }
        }
        return ServiceTls {
            listener,
            upstream: None,
        };
    }
    let skip_verify = service
        .upstream_skip_verify
        .as_ref()
        .is_some_and(|skip| *skip.get_ref());
    let server_name = match &service.upstream_server_name {
        Some(name_override) => ServerName::try_from(name_override.get_ref().clone()).map_err(|_| {
            report(
                name_override.span(),
                format!(
                    "service `{name}`: upstream_server_name `{}` is not a DNS name or an IP address",
                    name_override.get_ref()
                ),
            )
        }),
        None => ServerName::try_from(upstream.host().to_owned()).map_err(|_| {
            report(
                service.upstream.span(),
                format!(
                    "service `{name}`: upstream host `{}` cannot be checked against a certificate; set `upstream_server_name` to the name the certificate holds",
                    upstream.host()
                ),
            )
        }),
    };
    // Only a CA file can be wrong: any other trust builds from nothing
    // the plan names.
    let ca = match (&service.upstream_ca, skip_verify) {
        (Some(ca), true) => {
            report(
                ca.span(),
                format!(
                    "service `{name}` sets both `upstream_ca` and `upstream_skip_verify = true`; keep `upstream_ca` to verify, or remove it to skip verification"
                ),
            );
            None
        }
        (Some(ca), false) => Some(
            tls::read("upstream CA file", &resolve(base, ca.get_ref()))
                .and_then(|pem| tls::root_store("upstream CA file", &pem).map(|_| pem))
                .map(Some)
                .map_err(|e| report(ca.span(), format!("service `{name}`: {e}"))),
        ),
        (None, _) => Some(Ok(None)),
    };
    let upstream = match (ca, server_name) {
        (Some(Ok(ca)), Ok(server_name)) => {
            let tls = UpstreamTls {
                ca,
                server_name,
                skip_verify,
                alpn: ALPN_HTTP1,
            };
            match UpstreamConnector::new(&tls) {
                Ok(_) => Some(tls),
                Err(e) => {
                    report(service.upstream.span(), format!("service `{name}`: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    ServiceTls { listener, upstream }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, Error};
    use rustls::pki_types::ServerName;

    fn service(lines: &str) -> String {
        format!(
            "[datacenters.pangyo]\n[services.pay]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\n{lines}\n"
        )
    }

    fn messages(source: &str) -> Vec<(usize, String)> {
        match parse(source, "plan.toml") {
            Ok(_) => panic!("plan should be rejected:\n{source}"),
            Err(Error::Invalid(diagnostics)) => diagnostics
                .into_iter()
                .map(|d| (d.line, d.message))
                .collect(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn an_https_upstream_verifies_its_host_by_default_or_the_name_given() {
        let plan = parse(
            &service("upstream = 'https://127.0.0.1:8443'\nupstream_skip_verify = false"),
            "plan.toml",
        )
        .unwrap();
        let tls = plan.topology.services[0].upstream_tls.as_ref().unwrap();
        assert_eq!(tls.server_name, ServerName::try_from("127.0.0.1").unwrap());
        assert!(!tls.skip_verify);
        let plan = parse(
            &service("upstream = 'https://10.0.0.7:8443'\nupstream_server_name = 'pay.internal'\nupstream_skip_verify = true"),
            "plan.toml",
        )
        .unwrap();
        let tls = plan.topology.services[0].upstream_tls.as_ref().unwrap();
        assert_eq!(
            tls.server_name,
            ServerName::try_from("pay.internal").unwrap()
        );
        assert!(tls.skip_verify);
        let plan = parse(&service("upstream = 'http://127.0.0.1:8080'"), "plan.toml").unwrap();
        assert!(plan.topology.services[0].upstream_tls.is_none());
    }

    #[test]
    fn contradicting_or_malformed_upstream_tls_settings_are_errors_at_their_line() {
        let both = service("upstream = 'https://127.0.0.1:8443'\nupstream_ca = 'ca.pem'\nupstream_skip_verify = true");
        let errors = messages(&both);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 7);
        assert!(
            errors[0]
                .1
                .contains("sets both `upstream_ca` and `upstream_skip_verify = true`"),
            "{errors:?}"
        );

        let bad_name =
            service("upstream = 'https://127.0.0.1:8443'\nupstream_server_name = 'not a name'");
        let errors = messages(&bad_name);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 7);
        assert!(
            errors[0].1.contains("is not a DNS name or an IP address"),
            "{errors:?}"
        );

        let missing_ca =
            service("upstream = 'https://127.0.0.1:8443'\nupstream_ca = 'nowhere/ca.pem'");
        let errors = messages(&missing_ca);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 7);
        assert!(
            errors[0]
                .1
                .contains("cannot read upstream CA file nowhere/ca.pem"),
            "{errors:?}"
        );
    }
}
