//! How long a fault takes to reach connections that are already open:
//! opens N connections through a firedrill tcp service (each pings in a
//! loop), activates a blackhole through the admin API, and reports when
//! each connection received its last answer, relative to the moment the
//! POST was sent.
//!
//! Two modes, both run by hand:
//! - in-process (default): an echo server, firedrill and the clients share
//!   one process. `cargo bench --bench reaction` (CONNECTIONS=1000).
//! - external, when `PROXY` and `ADMIN` are set: only the clients run here,
//!   against a firedrill in a process of its own whose tcp service `PROXY`
//!   fronts a redis-server; each connection sends `PING` and waits for
//!   `+PONG`. firedrill holds two descriptors per connection, so 10,000
//!   connections do not fit one process's open-files limit beside their
//!   clients; `benches/run.sh` uses this mode. `SCENARIO` (default `fire`)
//!   names the scenario to activate; it must blackhole the service.
//!
//! Knobs: `CONNECTIONS`, `PING_INTERVAL_MS` (default 5; with thousands of
//! connections raise it so the pings do not saturate the machine).
//! The last line is machine-readable: `reaction connections=... post_ms=...`.

mod support;
use support::env_number;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What a connection sends and what it expects back.
struct Protocol {
    ping: &'static [u8],
    pong: &'static [u8],
}

const ECHO: Protocol = Protocol {
    ping: b"x",
    pong: b"x",
};
const REDIS: Protocol = Protocol {
    ping: b"PING\r\n",
    pong: b"+PONG\r\n",
};

/// When a connection last got its answer, and when it gave up.
struct Stopped {
    last: Instant,
    gave_up: Instant,
}

#[tokio::main]
async fn main() {
    let connections: usize = env_number("CONNECTIONS", 1000);
    let interval = Duration::from_millis(env_number("PING_INTERVAL_MS", 5));
    // A silent connection counts as stopped after this long; under heavy
    // load an answer can take a while, so never less than half a second.
    let patience = Duration::from_millis(500).max(interval * 2);

    match (std::env::var("PROXY"), std::env::var("ADMIN")) {
        (Ok(proxy), Ok(admin)) => {
            let proxy: SocketAddr = proxy.parse().expect("PROXY is host:port");
            let admin: SocketAddr = admin.parse().expect("ADMIN is host:port");
            let scenario = std::env::var("SCENARIO").unwrap_or_else(|_| "fire".into());
            measure(
                proxy,
                admin,
                &scenario,
                &REDIS,
                connections,
                interval,
                patience,
            )
            .await;
        }
        _ => in_process(connections, interval, patience).await,
    }
}

/// Echo server, firedrill and clients in this process.
async fn in_process(connections: usize, interval: Duration, patience: Duration) {
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let upstream = echo.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let plan = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[datacenters.pangyo]
[services.cache]
datacenter = "pangyo"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
[scenarios.fire]
[[scenarios.fire.faults]]
datacenter = "pangyo"
action = "blackhole"
"#
    );
    let plan = firedrill::config::parse(&plan, "reaction.toml").expect("plan parses");
    let running = firedrill::start(plan).await.expect("firedrill starts");
    let proxy = running.service_addr("cache").expect("cache listens");
    let admin = running.admin_addr();
    measure(proxy, admin, "fire", &ECHO, connections, interval, patience).await;
    running.shutdown(Duration::from_secs(1)).await;
}

async fn measure(
    proxy: SocketAddr,
    admin: SocketAddr,
    scenario: &str,
    protocol: &'static Protocol,
    connections: usize,
    interval: Duration,
    patience: Duration,
) {
    let (ready, mut answered_once) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect(proxy).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = Instant::now();
            let mut answer = vec![0u8; protocol.pong.len()];
            let mut first = true;
            loop {
                if stream.write_all(protocol.ping).await.is_err() {
                    break;
                }
                match tokio::time::timeout(patience, stream.read_exact(&mut answer)).await {
                    Ok(Ok(_)) if answer == protocol.pong => last = Instant::now(),
                    _ => break,
                }
                if first {
                    first = false;
                    let _ = ready.send(());
                }
                tokio::time::sleep(interval).await;
            }
            Stopped {
                last,
                gave_up: Instant::now(),
            }
        }));
    }
    drop(ready);
    // Every connection answered once (so it reaches the upstream), then a
    // few more pings so the load is steady when the fault lands.
    let mut confirmed = 0;
    while confirmed < connections {
        match tokio::time::timeout(Duration::from_secs(30), answered_once.recv()).await {
            Ok(Some(())) => confirmed += 1,
            _ => panic!("only {confirmed} of {connections} connections ever answered"),
        }
    }
    tokio::time::sleep(Duration::from_secs(1).max(interval * 3)).await;

    let sent = Instant::now();
    let mut api = TcpStream::connect(admin).await.expect("admin connect");
    let request = format!(
        "POST /faults/{scenario} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    api.write_all(request.as_bytes()).await.expect("post");
    let mut answer = Vec::new();
    api.read_to_end(&mut answer).await.expect("answer");
    let answered = sent.elapsed();
    assert!(answer.starts_with(b"HTTP/1.1 201"), "activation failed");

    let mut reaction: Vec<Duration> = Vec::with_capacity(connections);
    // Connections that went silent before the POST: the load, not the fault.
    let mut early = 0;
    for task in tasks {
        let stopped = task.await.expect("ping task");
        if stopped.gave_up < sent {
            early += 1;
        }
        reaction.push(stopped.last.saturating_duration_since(sent));
    }
    reaction.sort();
    let pick = |q: f64| reaction[((reaction.len() - 1) as f64 * q) as usize];
    println!(
        "{connections} open connections (a ping every {interval:?}); POST answered after {answered:?}; \
         last answer after the POST: p50 {:?}, p99 {:?}, max {:?}; {early} went silent before the POST",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "reaction connections={connections} interval_ms={} post_ms={:.2} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} early={early}",
        interval.as_millis(),
        ms(answered),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(pick(1.0))
    );
}
