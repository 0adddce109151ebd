//! A `prometheus` guard over https: a real Prometheus serving TLS with a
//! certificate from a test CA, which firedrill trusts as a system CA
//! (`SSL_CERT_FILE`, read once per process: this test has its binary to
//! itself). The query's value trips the guard.

mod support;
use support::prometheus::Prometheus;
use support::*;

use firedrill::engine::Happened;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

#[tokio::test]
async fn a_prometheus_guard_queries_prometheus_over_https() {
    if !programs_present(&["prometheus"], "apt-get install prometheus") {
        return;
    }
    let dir = TempDir::new("firedrill-guard-tls");
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("prometheus.pem"),
        dir.path().join("prometheus.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    // Before anything in this process reads the system's CA certificates.
    std::env::set_var("SSL_CERT_FILE", &ca_file);

    let (nothing, _socket) = unreachable_upstream();
    let prometheus = Prometheus::start(nothing, Some((&cert_file, &key_file))).await;
    let upstream = http_upstream("talk").await;
    let mut plan = PlanText::new(&["pangyo"])
        .http("talk", "pangyo", upstream)
        .fault("fire", "talk", "action = 'drop'")
        .toml()
        .to_owned();
    plan += &format!(
        "\n[[scenarios.fire.stop_when]]\nname = 'over-tls'\nprometheus = 'https://{}'\nquery = 'vector(5)'\nabove = 1\n",
        prometheus.addr
    );
    let running = start(&plan).await;
    let mut events = engine_events(&running);
    activate(&running, "fire").await;
    let event = wait_for_event(&mut events, |e| matches!(e.what, Happened::Stopped { .. })).await;
    let Happened::Stopped { stop, .. } = event.what else {
        unreachable!()
    };
    assert_eq!(stop.guard, "over-tls");
    assert_eq!(stop.value, Some(5.0), "{stop:?}\n{}", prometheus.log());
    assert_eq!(stop.detail, "query returned 1 sample(s), the highest 5");
}
