//! firedrill in front of real third-party programs: a real `redis-server`
//! behind a tcp service driven by `redis-cli`, and `curl` against http
//! services, through a Pangyo fire and back. Skipped (with install hints)
//! when the programs are missing, except on CI where that fails.

mod support;
use support::*;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

const PROGRAMS: [&str; 3] = ["redis-server", "redis-cli", "curl"];
const INSTALL: &str = "apt-get install redis-server redis-tools curl";

/// A real redis-server on a loopback port, stopped on drop.
struct Redis {
    _process: Process,
    addr: SocketAddr,
}

impl Redis {
    /// Starts redis-server on a free port (redis refuses `--port 0`, so a
    /// port is picked by binding :0 and letting go; on the rare clash with
    /// another process, try again).
    fn start() -> Redis {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting redis-server");
            let mut process = Process(child);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if process
                    .0
                    .try_wait()
                    .expect("polling redis-server")
                    .is_some()
                {
                    break; // Most likely the port was taken meanwhile.
                }
                if redis_answers(addr) {
                    return Redis {
                        _process: process,
                        addr,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("redis-server did not start on a loopback port");
    }
}

/// Whether a redis server at `addr` answers PING (bounded by short timeouts).
fn redis_answers(addr: SocketAddr) -> bool {
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Runs a program to its end off the async runtime, so the in-process proxy
/// keeps running; kills it by PID if it outlives `limit`.
async fn run(program: &'static str, args: Vec<String>, limit: Duration) -> Ran {
    tokio::task::spawn_blocking(move || run_captured(Command::new(program).args(args), limit))
        .await
        .expect("the command runner does not panic")
}

async fn redis_cli(proxy: SocketAddr, command: &[&str], limit: Duration) -> Ran {
    let mut args = vec![
        "-h".to_owned(),
        proxy.ip().to_string(),
        "-p".to_owned(),
        proxy.port().to_string(),
    ];
    args.extend(command.iter().map(|s| s.to_string()));
    run("redis-cli", args, limit).await
}

async fn curl(url: String) -> Ran {
    let args = ["-s", "-m", "2", &url].map(str::to_owned).to_vec();
    run("curl", args, Duration::from_secs(15)).await
}

/// Asserts that redis-cli ran `command` through the proxy and printed `reply`.
async fn assert_redis(proxy: SocketAddr, command: &[&str], reply: &str) {
    let ran = redis_cli(proxy, command, Duration::from_secs(15)).await;
    assert!(ran.succeeded(), "redis-cli {command:?}: {ran:?}");
    assert_eq!(
        ran.stdout.trim_end(),
        reply,
        "redis-cli {command:?}: {ran:?}"
    );
}

async fn assert_curl(addr: SocketAddr, service: &str) {
    let ran = curl(format!("http://{addr}/x")).await;
    assert!(ran.succeeded(), "curl {service}: {ran:?}");
    assert_eq!(ran.stdout, format!("{service} answered GET /x\n"));
}

/// Starts firedrill in front of a real redis and two http upstreams:
/// `session-cache` (tcp) and `talk` (http) in pangyo, `maps` (http) in ansan.
async fn stack(redis: &Redis) -> firedrill::Running {
    let talk = http_upstream("talk").await;
    let maps = http_upstream("maps").await;
    let redis = redis.addr;
    PlanText::new(&["pangyo", "ansan"])
        .tcp("session-cache", "pangyo", redis)
        .http("talk", "pangyo", talk)
        .http("maps", "ansan", maps)
        .scenario(
            "pangyo-fire",
            &["datacenter = 'pangyo'; action = 'blackhole'"],
        )
        .fault("cache-flap", "session-cache", "action = 'drop'")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pangyo_fire_silences_redis_and_http_there_and_lifting_it_brings_them_back() {
    if !programs_present(&PROGRAMS, INSTALL) {
        return;
    }
    let redis = Redis::start();
    let running = stack(&redis).await;
    let cache = addr(&running, "session-cache");
    let talk = addr(&running, "talk");
    let maps = addr(&running, "maps");

    assert_redis(cache, &["PING"], "PONG").await;
    assert_redis(cache, &["SET", "k", "v"], "OK").await;
    assert_redis(cache, &["GET", "k"], "v").await;
    assert_curl(talk, "talk").await;
    assert_curl(maps, "maps").await;

    activate(&running, "pangyo-fire").await;
    let (ping, talk_down, maps_up) = tokio::join!(
        redis_cli(cache, &["PING"], Duration::from_secs(3)),
        curl(format!("http://{talk}/x")),
        curl(format!("http://{maps}/x")),
    );
    assert!(
        !ping.succeeded() && !ping.stdout.contains("PONG"),
        "redis-cli got through a blackhole: {ping:?}"
    );
    assert_eq!(
        talk_down.status.and_then(|s| s.code()),
        Some(28),
        "curl to a blackholed service times out: {talk_down:?}"
    );
    assert!(
        talk_down.elapsed >= Duration::from_millis(1900),
        "curl gave up before its 2s limit: {talk_down:?}"
    );
    assert!(maps_up.succeeded(), "ansan is not on fire: {maps_up:?}");
    assert_eq!(maps_up.stdout, "maps answered GET /x\n");

    let (status, body) = admin(&running, Method::DELETE, "/faults", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same redis, data intact, answers again.
    assert_redis(cache, &["GET", "k"], "v").await;
    assert_redis(cache, &["SET", "k", "w"], "OK").await;
    assert_redis(cache, &["PING"], "PONG").await;
    assert_curl(talk, "talk").await;
    assert_curl(maps, "maps").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_fault_makes_redis_cli_fail_at_once_instead_of_hanging() {
    if !programs_present(&PROGRAMS, INSTALL) {
        return;
    }
    let redis = Redis::start();
    let running = stack(&redis).await;
    let cache = addr(&running, "session-cache");
    assert_redis(cache, &["PING"], "PONG").await;

    activate(&running, "cache-flap").await;
    let ran = redis_cli(cache, &["PING"], Duration::from_secs(15)).await;
    assert!(
        ran.status.is_some(),
        "redis-cli hung on a dropped connection: {ran:?}"
    );
    assert!(!ran.stdout.contains("PONG"), "{ran:?}");
    // The connection is reset: redis-cli says so and exits 1.
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("Connection reset"), "{ran:?}");

    lift(&running, "cache-flap").await;
    assert_redis(cache, &["PING"], "PONG").await;
}
