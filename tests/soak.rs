//! Soak: the real binary under mixed traffic (http keep-alive and new
//! connections, short and long tcp echo connections, three data centers)
//! while scenarios are switched on and off every 1-3 s through the admin
//! API, `DELETE /faults` included. Checks: no panic, still alive and
//! healthy, every request succeeded while no fault could reach it, a clean
//! shutdown at the end, and a resident set that does not grow.
//!
//! `FIREDRILL_SOAK_SECONDS` sets the length (default 60, CI's run);
//! `benches/soak.sh` runs ten minutes in release mode.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::*;

const DATACENTERS: [&str; 3] = ["pangyo", "ansan", "busan"];
/// Longest a single request or round trip may take before it counts as
/// held (a blackhole holds forever).
const OP_LIMIT: Duration = Duration::from_secs(2);
/// Pause between one driver's operations: mixed traffic, not a load test,
/// so a loaded 2-core machine keeps up.
const PACE: Duration = Duration::from_millis(10);
/// How often the resident set is sampled.
const RSS_EVERY: Duration = Duration::from_secs(2);

/// The scenarios of the soak plan, the data center each can make fail
/// (`None`: it only delays, nothing fails), and its faults.
const SCENARIOS: [(&str, Option<&str>, &str); 5] = [
    (
        "pangyo-dark",
        Some("pangyo"),
        "datacenter = 'pangyo'; action = 'blackhole'",
    ),
    (
        "ansan-flaky",
        Some("ansan"),
        "datacenter = 'ansan'; action = 'drop'; probability = 0.3",
    ),
    (
        "ansan-errors",
        Some("ansan"),
        "service = 'web-ansan'; action = 'error'; status = 503; probability = 0.5",
    ),
    (
        "busan-staged",
        Some("busan"),
        "service = 'web-busan'; action = 'drop'; after = '1s'; duration = '1s'",
    ),
    (
        "busan-slow",
        None,
        "datacenter = 'busan'; action = 'delay'; latency = '20ms'; jitter = '10ms'",
    ),
];

/// What the scenario switcher has done, as the traffic drivers see it.
#[derive(Default)]
struct Switchboard {
    /// Scenarios the switcher activated and has not lifted; some may have
    /// expired already, which only makes the check below stricter about
    /// less.
    active: Mutex<HashSet<&'static str>>,
    /// Moves before and after every admin call: an operation that saw the
    /// same value at its start and its end overlapped no switch.
    generation: AtomicU64,
}

impl Switchboard {
    /// Whether no scenario that can fail `datacenter` is (possibly) active.
    fn clear(&self, datacenter: &str) -> bool {
        let active = self.active.lock().unwrap();
        SCENARIOS
            .iter()
            .filter(|(name, _, _)| active.contains(name))
            .all(|(_, hits, _)| *hits != Some(datacenter))
    }
}

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    /// An http status other than the upstream's 200 (injected errors).
    Status(u16),
    /// Closed or reset, or a transport error.
    Broken,
    /// No answer within [`OP_LIMIT`].
    Held,
}

/// Outcomes per (driver kind, whether no fault could reach it).
#[derive(Default)]
struct Tally(Mutex<BTreeMap<(&'static str, bool, Outcome), u64>>);

impl Tally {
    fn add(&self, kind: &'static str, clear: bool, outcome: Outcome) {
        *self
            .0
            .lock()
            .unwrap()
            .entry((kind, clear, outcome))
            .or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_minute_drill_in_one_minute_leaves_firedrill_healthy_and_its_memory_flat() {
    let seconds: u64 = std::env::var("FIREDRILL_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let length = Duration::from_secs(seconds);
    let mut plan = PlanText::new(&DATACENTERS);
    for dc in DATACENTERS {
        plan = plan
            .http(
                &format!("web-{dc}"),
                dc,
                http_upstream(&format!("web-{dc}")).await,
            )
            .tcp(&format!("cache-{dc}"), dc, echo_upstream().await);
    }
    for (name, _, fault) in SCENARIOS {
        plan = plan.scenario_with(name, "max_duration = '8s'", &[fault]);
    }
    let dir = TempDir::new("soak");
    let path = dir.path().join("soak.toml");
    std::fs::write(&path, plan.toml()).unwrap();
    let mut firedrill = Binary::run(&path, &[]);

    let board = Arc::new(Switchboard::default());
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + length;
    let mut drivers = Vec::new();
    for dc in DATACENTERS {
        let web = firedrill.service(&format!("web-{dc}"));
        let cache = firedrill.service(&format!("cache-{dc}"));
        let expected = format!("web-{dc} answered GET /soak\n");
        for kind in ["http-keep-alive", "http-new", "tcp-short", "tcp-long"] {
            let (board, tally, expected) =
                (Arc::clone(&board), Arc::clone(&tally), expected.clone());
            drivers.push(tokio::spawn(drive(
                kind, dc, web, cache, expected, board, tally, deadline,
            )));
        }
    }

    let mut rss = Vec::new();
    let mut switches = BTreeMap::<String, u64>::new();
    let mut rng = SmallRng::from_os_rng();
    let mut next_switch = Instant::now() + Duration::from_secs(1);
    let mut next_sample = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_sample {
            rss.push(firedrill.rss_kib().expect("firedrill is alive"));
            next_sample += RSS_EVERY;
        }
        if Instant::now() >= next_switch {
            let what = switch(&firedrill, &board, &mut rng).await;
            *switches.entry(what).or_default() += 1;
            next_switch = Instant::now() + Duration::from_millis(rng.random_range(1000..3000));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for driver in drivers {
        within(OP_LIMIT * 5, driver)
            .await
            .expect("a driver does not panic");
    }

    // Still alive and healthy, lifts everything, and passes traffic.
    assert!(
        firedrill.process.0.try_wait().unwrap().is_none(),
        "firedrill exited:\n{}",
        firedrill.log()
    );
    let (status, health) = firedrill.admin(Method::GET, "/healthz", "").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{health}");
    firedrill
        .admin(Method::DELETE, "/faults", "")
        .await
        .unwrap();
    for dc in DATACENTERS {
        let (status, body) = get(firedrill.service(&format!("web-{dc}")), "/soak").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut cache = connect(firedrill.service(&format!("cache-{dc}"))).await;
        carry_echo(&mut cache, b"after the drill").await;
    }

    // A clean shutdown on SIGTERM, and no panic anywhere in the log.
    let pid = firedrill.process.0.id().to_string();
    let sent = run_captured(
        std::process::Command::new("kill").args(["-TERM", &pid]),
        STEP,
    );
    assert!(sent.succeeded(), "kill -TERM {pid}: {}", sent.stderr);
    let exit = firedrill.process.wait_within(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(100));
    let log = firedrill.log();
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit {exit:?} after SIGTERM:\n{log}"
    );
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");

    let tally = tally.0.lock().unwrap().clone();
    println!("soak: {seconds} s; switches {switches:?}");
    println!("soak: RSS KiB every {RSS_EVERY:?}: {rss:?}");
    for ((kind, clear, outcome), n) in &tally {
        let window = if *clear { "no fault" } else { "fault possible" };
        println!("soak: {kind:16} {window:15} {outcome:?}: {n}");
    }

    // Every operation that no fault could reach succeeded.
    let failed: Vec<_> = tally
        .iter()
        .filter(|((_, clear, outcome), _)| *clear && *outcome != Outcome::Ok)
        .collect();
    assert!(
        failed.is_empty(),
        "failures while no fault could reach: {failed:?}"
    );
    // Sanity: every kind of traffic flowed, and the faults were felt.
    for kind in ["http-keep-alive", "http-new", "tcp-short", "tcp-long"] {
        let ok: u64 = tally
            .iter()
            .filter(|((k, _, o), _)| *k == kind && *o == Outcome::Ok)
            .map(|(_, n)| n)
            .sum();
        assert!(ok >= seconds, "only {ok} successful {kind} operations");
    }
    let felt: u64 = tally
        .iter()
        .filter(|((_, _, o), _)| *o != Outcome::Ok)
        .map(|(_, n)| n)
        .sum();
    assert!(felt > 0, "no fault was ever felt");

    // A flat resident set. The first third includes warm-up (allocator
    // arenas, buffers at peak concurrency) and glibc rarely hands memory
    // back, so a leak shows as growth of the later maxima over the early
    // ones. 30 % plus 16 MiB absorbs allocator noise on a one-minute run;
    // a leak of even 100 bytes per operation at this traffic (thousands of
    // operations a second over ten minutes) goes far beyond it.
    let third = rss.len() / 3;
    assert!(third >= 2, "too few RSS samples: {rss:?}");
    let early = *rss[..third].iter().max().unwrap();
    let late = *rss[rss.len() - third..].iter().max().unwrap();
    let allowed = early + early * 3 / 10 + 16 * 1024;
    println!("soak: RSS max first third {early} KiB, last third {late} KiB, allowed {allowed} KiB");
    assert!(
        late <= allowed,
        "RSS grew from {early} KiB to {late} KiB: {rss:?}"
    );
}

/// Switches one random thing: activates a scenario (sometimes for a short
/// duration), lifts one, or lifts everything. Returns what it did.
async fn switch(firedrill: &Binary, board: &Switchboard, rng: &mut SmallRng) -> String {
    let (scenario, _, _) = SCENARIOS[rng.random_range(0..SCENARIOS.len())];
    let roll = rng.random_range(0..10);
    board.generation.fetch_add(1, Ordering::SeqCst);
    let what = if roll < 6 {
        // Mark it first: requests from now on may meet it.
        board.active.lock().unwrap().insert(scenario);
        let body = if rng.random_bool(0.3) {
            r#"{"duration": "2s"}"#
        } else {
            ""
        };
        let path = format!("/faults/{scenario}");
        let (status, answer) = firedrill.admin(Method::POST, &path, body).await.unwrap();
        assert!(
            status.is_success(),
            "activating {scenario}: {status} {answer}"
        );
        "activate"
    } else if roll < 9 {
        let path = format!("/faults/{scenario}");
        let (status, answer) = firedrill.admin(Method::DELETE, &path, "").await.unwrap();
        assert_eq!(status, StatusCode::OK, "lifting {scenario}: {answer}");
        board.active.lock().unwrap().remove(scenario);
        "lift"
    } else {
        let (status, answer) = firedrill
            .admin(Method::DELETE, "/faults", "")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "halting: {answer}");
        board.active.lock().unwrap().clear();
        "halt"
    };
    board.generation.fetch_add(1, Ordering::SeqCst);
    what.to_owned()
}

/// Runs one kind of traffic to one data center until `deadline`, recording
/// each operation's outcome and whether a fault could have reached it.
#[allow(clippy::too_many_arguments)]
async fn drive(
    kind: &'static str,
    datacenter: &'static str,
    web: SocketAddr,
    cache: SocketAddr,
    expected: String,
    board: Arc<Switchboard>,
    tally: Arc<Tally>,
    deadline: Instant,
) {
    let keep_alive = client();
    let mut long: Option<TcpStream> = None;
    let url = format!("http://{web}/soak");
    while Instant::now() < deadline {
        let generation = board.generation.load(Ordering::SeqCst);
        let clear_before = board.clear(datacenter);
        let op = async {
            match kind {
                "http-keep-alive" | "http-new" => {
                    let fresh;
                    let client = if kind == "http-new" {
                        fresh = client();
                        &fresh
                    } else {
                        &keep_alive
                    };
                    let request = http::Request::get(&url).body(Default::default());
                    let response = match client.request(request.unwrap()).await {
                        Ok(response) => response,
                        Err(_) => return Outcome::Broken,
                    };
                    let status = response.status();
                    // A drop or blackhole that starts while the body
                    // streams cuts it.
                    let body = http_body_util::BodyExt::collect(response.into_body()).await;
                    match body.map(|body| body.to_bytes()) {
                        Ok(body) if status == StatusCode::OK && body == expected => Outcome::Ok,
                        Ok(_) => Outcome::Status(status.as_u16()),
                        Err(_) => Outcome::Broken,
                    }
                }
                "tcp-short" => match TcpStream::connect(cache).await {
                    Ok(mut stream) => {
                        let outcome = echo(&mut stream, &[7u8; 1024]).await;
                        let _ = stream.shutdown().await;
                        outcome
                    }
                    Err(_) => Outcome::Broken,
                },
                _ => {
                    if long.is_none() {
                        long = TcpStream::connect(cache).await.ok();
                    }
                    match long.as_mut() {
                        Some(stream) => echo(stream, b"ping").await,
                        None => Outcome::Broken,
                    }
                }
            }
        };
        let outcome = tokio::time::timeout(OP_LIMIT, op)
            .await
            .unwrap_or(Outcome::Held);
        if outcome != Outcome::Ok {
            // A long connection that failed once is replaced.
            long = None;
        }
        let clear = clear_before
            && board.clear(datacenter)
            && board.generation.load(Ordering::SeqCst) == generation;
        tally.add(kind, clear, outcome);
        tokio::time::sleep(PACE).await;
    }
}

/// One echo round trip.
async fn echo(stream: &mut TcpStream, data: &[u8]) -> Outcome {
    match echo_round_trip(stream, data).await {
        Ok(back) if back == data => Outcome::Ok,
        _ => Outcome::Broken,
    }
}
