//! How long a fault takes to reach connections that are already open:
//! opens N echo connections through firedrill (each pings in a loop),
//! activates a blackhole through the admin API, and reports when each
//! connection received its last echo, relative to the moment the POST was
//! sent. Run by hand: `cargo bench --bench reaction` (CONNECTIONS=1000).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    let connections: usize = std::env::var("CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
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

    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut stream = TcpStream::connect(proxy).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        tasks.push(tokio::spawn(async move {
            let mut last = Instant::now();
            let mut byte = [0u8; 1];
            loop {
                if stream.write_all(b"x").await.is_err() {
                    return last;
                }
                match tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut byte))
                    .await
                {
                    Ok(Ok(_)) => last = Instant::now(),
                    _ => return last,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let admin = running.admin_addr();
    let sent = Instant::now();
    let mut api = TcpStream::connect(admin).await.expect("admin connect");
    api.write_all(
        b"POST /faults/fire HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("post");
    let mut answer = Vec::new();
    api.read_to_end(&mut answer).await.expect("answer");
    let answered = sent.elapsed();
    assert!(answer.starts_with(b"HTTP/1.1 201"), "activation failed");

    let mut reaction: Vec<Duration> = Vec::new();
    for task in tasks {
        let last = task.await.expect("ping task");
        reaction.push(last.saturating_duration_since(sent));
    }
    reaction.sort();
    let pick = |q: f64| reaction[((reaction.len() - 1) as f64 * q) as usize];
    println!(
        "{connections} open connections; POST answered after {answered:?}; last echo after the POST: p50 {:?}, p99 {:?}, max {:?}",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    running.shutdown(Duration::from_secs(1)).await;
}
