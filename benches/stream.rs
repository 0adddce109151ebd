//! What watching costs: the CPU of the whole process (firedrill, its
//! upstreams and the clients, all in-process) per request served with
//! traffic flowing, without and with `STREAMS` open `GET /stream`s, in
//! interleaved rounds; and how long one `GET /status` takes (wall clock,
//! and CPU counted over the whole process, so an upper bound), which is
//! the work behind each push of each stream.
//!
//! Run by hand: `cargo bench --bench stream` (or `--profile dev` for a
//! quick, pessimistic reading). Knobs: `DATACENTERS` (4), `SERVICES` per
//! data center (6), `CLIENTS` (16), `STREAMS` (10), `ROUND_SECONDS` (5),
//! `ROUNDS` (3). Linux only: it reads `/proc/self/stat`.

mod support;
use support::{cpu, env_number, upstream};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() {
    let (datacenters, services) = (
        env_number::<u64>("DATACENTERS", 4),
        env_number::<u64>("SERVICES", 6),
    );
    let (clients, streams) = (
        env_number::<u64>("CLIENTS", 16),
        env_number::<u64>("STREAMS", 10),
    );
    let round = Duration::from_secs(env_number::<u64>("ROUND_SECONDS", 5));
    let rounds = env_number::<u64>("ROUNDS", 3);
    let upstream = upstream().await;
    let mut plan = String::from("[admin]\nlisten = '127.0.0.1:0'\n");
    for dc in 0..datacenters {
        plan += &format!("[datacenters.dc{dc}]\n");
        for s in 0..services {
            plan += &format!(
                "[services.s{dc}x{s}]\ndatacenter = 'dc{dc}'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '{upstream}'\n"
            );
        }
    }
    let plan = firedrill::config::parse(&plan, "bench.toml").expect("a valid plan");
    let running = firedrill::start(plan).await.expect("firedrill starts");
    let admin = running.admin_addr();
    let targets: Vec<String> = (0..datacenters * services)
        .map(|i| {
            let name = format!("s{}x{}", i / services, i % services);
            format!("http://{}/", running.service_addr(&name).unwrap())
        })
        .collect();

    let served = Arc::new(AtomicU64::new(0));
    for c in 0..clients {
        let (served, targets) = (Arc::clone(&served), targets.clone());
        tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut i = c as usize;
            loop {
                i = (i + 1) % targets.len();
                let request = hyper::Request::get(&targets[i])
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if let Ok(response) = client.request(request).await {
                    let _ = response.into_body().collect().await;
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str| {
        hyper::Request::get(format!("http://{admin}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Warm up, then one GET /status at a time: the work of one push.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = 200;
    let (started, cpu0) = (Instant::now(), cpu());
    for _ in 0..calls {
        let response = client.request(get("/status")).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    let per_status = started.elapsed() / calls;
    // With traffic flowing this counts the clients' CPU too: an upper bound.
    let status_cpu = (cpu() - cpu0) / calls;

    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..rounds {
        for open in [0, streams] {
            let mut readers = Vec::new();
            for _ in 0..open {
                let response = client.request(get("/stream")).await.unwrap();
                readers.push(tokio::spawn(async move {
                    let mut body = response.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                }));
            }
            let (cpu0, served0, at0) = (cpu(), served.load(Ordering::Relaxed), Instant::now());
            tokio::time::sleep(round).await;
            let (cpu1, served1, at1) = (cpu(), served.load(Ordering::Relaxed), Instant::now());
            for reader in readers {
                reader.abort();
            }
            let requests = served1 - served0;
            let per_request = (cpu1 - cpu0).as_secs_f64() * 1e6 / requests.max(1) as f64;
            let rate = requests as f64 / (at1 - at0).as_secs_f64();
            println!("streams={open:<3} requests/s={rate:>9.0} cpu/request={per_request:>7.1} µs");
            if open == 0 {
                without.push(per_request);
            } else {
                with.push(per_request);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut without), median(&mut with));
    println!(
        "stream services={} streams={streams} status_us={} status_cpu_us<={} cpu_per_request_us_without={a:.1} with={b:.1} ratio={:.3}",
        datacenters * services,
        per_status.as_micros(),
        status_cpu.as_micros(),
        b / a.max(f64::MIN_POSITIVE)
    );
    drop(running);
}
