//! `firedrill demo` through the real binary: with a port of its default
//! layout taken it says to use `--port-offset`, and with the offset it runs
//! every listener, stand-in upstream and the admin API on the moved ports.

mod support;
use support::*;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_firedrill");

/// The shipped plan the demo runs.
fn shipped_plan() -> firedrill::config::Plan {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kakao-staging.toml");
    firedrill::config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn port_of(authority: &str) -> u16 {
    authority.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Every port of the plan: admin API, listeners, upstreams.
fn ports(plan: &firedrill::config::Plan) -> Vec<u16> {
    let services = &plan.topology.services;
    std::iter::once(plan.admin.listen.port())
        .chain(services.iter().map(|s| s.listen.port()))
        .chain(services.iter().map(|s| port_of(&s.upstream.authority)))
        .collect()
}

/// Holds `port` on loopback; `None` when something else already does,
/// which leaves it just as taken.
fn occupy(port: u16) -> Option<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => Some(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => panic!("binding 127.0.0.1:{port}: {e}"),
    }
}

/// An offset that moves every one of `ports` to a free port below the
/// ephemeral range, where tests binding port 0 do not land.
fn free_offset(ports: &[u16]) -> u16 {
    (10_000..=16_000)
        .step_by(500)
        .find(|offset| {
            ports
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", p + offset)).is_ok())
        })
        .expect("a free range of ports for the demo")
}

/// The address in the hint line that ends with `comment`.
fn hinted(hints: &str, comment: &str) -> SocketAddr {
    let line = hints
        .lines()
        .find(|l| l.ends_with(comment))
        .unwrap_or_else(|| panic!("no hint for `{comment}` in:\n{hints}"));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let authority = url.trim_start_matches("http://").split('/').next().unwrap();
    authority.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_points_the_demo_at_port_offset_which_moves_every_port() {
    let plan = shipped_plan();
    let talk = plan.topology.service("talk").unwrap();
    let taken = port_of(&talk.upstream.authority);
    let _held = occupy(taken);

    // Without the offset the demo stops at the taken port and names the option.
    let ran = tokio::task::spawn_blocking(|| {
        let mut command = Command::new(BIN);
        command.arg("demo").stdin(Stdio::null());
        run_captured(&mut command, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "port {taken} is taken; run the demo on other ports with --port-offset, \
             like `firedrill demo --port-offset 10000`"
        )),
        "{}",
        ran.stderr
    );

    // So does a taken port among the moved ones, here a proxy listener.
    let offset = free_offset(&ports(&plan));
    let moved = talk.listen.port() + offset;
    let held = occupy(moved).expect("a port found free");
    let ran = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BIN);
        command
            .args(["demo", "--port-offset", &offset.to_string()])
            .stdin(Stdio::null());
        run_captured(&mut command, Duration::from_secs(30))
    })
    .await
    .unwrap();
    drop(held);
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "port {moved} is taken; run the demo on other ports with --port-offset"
        )),
        "{}",
        ran.stderr
    );

    // With a free offset, everything moves by it and answers there.
    let mut demo = Process(
        Command::new(BIN)
            .args(["demo", "--port-offset", &offset.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the demo"),
    );
    let log = collect(demo.0.stderr.take().unwrap());
    let received = lines(demo.0.stdout.take().unwrap());
    let mut hints = String::new();
    let deadline = Instant::now() + STEP;
    while !hints.contains("Ctrl-C stops the demo.") {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => hints += &(line + "\n"),
            Err(e) => {
                panic!(
                    "the demo did not start ({e}):\n{hints}\n{}",
                    log.join().unwrap()
                );
            }
        }
    }

    let talk_addr = hinted(&hints, "# talk in pangyo");
    assert_eq!(talk_addr.port(), talk.listen.port() + offset, "{hints}");
    let (status, body) = get(talk_addr, "/hello").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "talk (pangyo) answered GET /hello\n");

    let admin = hinted(&hints, "# Pangyo goes dark");
    assert_eq!(admin.port(), plan.admin.listen.port() + offset, "{hints}");
    let (status, body) = get(admin, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let cache = plan.topology.service("session-cache").unwrap();
    let mut stream = connect(SocketAddr::new(
        cache.listen.ip(),
        cache.listen.port() + offset,
    ))
    .await;
    carry_echo(&mut stream, b"PING\r\n").await;
}
