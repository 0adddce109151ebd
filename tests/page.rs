//! The live status page: served by the admin API under its tokens (a
//! browser's Basic credentials included), and driven in a real headless
//! Chromium over WebDriver with traffic flowing through real upstreams:
//! pangyo's tile goes dark within 3 s of `pangyo-fire` while the others
//! stay healthy, and recovers after the lift.

mod support;
use gameday::Traffic;
use support::*;

#[path = "support/gameday.rs"]
mod gameday;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use fantoccini::{Client as Browser, ClientBuilder};
use firedrill::Running;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::time::Instant;

const TOKENS: &str = "tokens = [{ name = 'lead', value = 's3cret-lead' }]";

/// A request to the admin API with the given headers; the status, the
/// headers and the body as text.
async fn call(
    running: &Running,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", running.admin_addr()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = within(STEP, client().request(request)).await.unwrap();
    let (parts, body) = response.into_parts();
    // A stream never ends: read its first frame only.
    let text = if parts
        .headers
        .get("content-type")
        .is_some_and(|t| t == "text/event-stream")
    {
        let mut body = body;
        let frame = within(STEP, body.frame()).await.unwrap().unwrap();
        String::from_utf8_lossy(&frame.into_data().unwrap_or_default()).into_owned()
    } else {
        let bytes = within(STEP, body.collect()).await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (parts.status, parts.headers, text)
}

fn basic(user: &str, token: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn the_page_is_one_self_contained_document() {
    let running = gameday::plan("").await.start().await;
    let (code, headers, page) = call(&running, Method::GET, "/", &[]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
    assert!(page.contains("uPlot (v1.6.32)") && page.contains("new EventSource(url(\"stream\"))"));
    // Nothing is fetched from elsewhere.
    assert!(
        !page.contains("<script src") && !page.contains("<link"),
        "no external assets"
    );
}

#[tokio::test]
async fn with_tokens_the_page_asks_a_browser_for_one_and_takes_it_as_basic() {
    let running = gameday::plan(TOKENS).await.start().await;
    let (code, headers, _) = call(&running, Method::GET, "/", &[]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"],
        "Basic realm=\"firedrill\", charset=\"UTF-8\""
    );
    let wrong = basic("lead", "nope");
    let (code, headers, _) = call(&running, Method::GET, "/", &[("authorization", &wrong)]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "a browser may ask again");
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));

    let right = basic("anyone", "s3cret-lead");
    for path in ["/", "/status", "/stream", "/faults"] {
        let (code, _, body) = call(&running, Method::GET, path, &[("authorization", &right)]).await;
        assert_eq!(code, StatusCode::OK, "{path}: {body}");
    }
    let bearer = ("authorization", "Bearer s3cret-lead");
    let (code, _, _) = call(&running, Method::GET, "/", &[bearer]).await;
    assert_eq!(code, StatusCode::OK);
    // The API's other endpoints keep their bearer challenge.
    let (code, headers, _) = call(&running, Method::GET, "/stream", &[]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
}

#[tokio::test]
async fn basic_credentials_change_something_only_from_the_pages_own_origin() {
    let running = gameday::plan(TOKENS).await.start().await;
    let right = basic("lead", "s3cret-lead");
    let path = "/faults/pangyo-fire";
    let auth = ("authorization", right.as_str());
    let (code, _, body) = call(&running, Method::POST, path, &[auth]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "no Origin: {body}");
    assert!(body.contains("Bearer TOKEN"), "{body}");
    let evil = ("origin", "http://evil.example");
    let (code, _, _) = call(&running, Method::POST, path, &[auth, evil]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "another site's form");
    assert!(running.engine().active().is_empty());

    let own = format!("http://{}", running.admin_addr());
    let (code, _, body) = call(&running, Method::POST, path, &[auth, ("origin", &own)]).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["activated_by"]
            .as_str()
            .unwrap()
            .starts_with("lead ("),
        "{answer}"
    );
}

#[tokio::test]
async fn with_open_reads_the_page_needs_no_token_and_its_writes_do() {
    let running = gameday::plan(&format!("{TOKENS}; open_reads = true"))
        .await
        .start()
        .await;
    let (code, _, _) = call(&running, Method::GET, "/", &[]).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = call(&running, Method::DELETE, "/faults", &[]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

// --- A real browser ---------------------------------------------------------------

/// chromedriver on a free loopback port, in a process group of its own so
/// that the browser it starts goes with it, killed by that id on drop.
struct Driver {
    process: Process,
    port: u16,
    _profile: TempDir,
}

impl Driver {
    /// Starts chromedriver and waits for it to be ready; `None` when it is
    /// not installed (outside CI).
    async fn start() -> Option<Driver> {
        let install = "bash .ci/install-test-deps (Debian packages chromium, chromium-driver)";
        if !programs_present(&["chromedriver", "chromium"], install) {
            return None;
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut command = Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let process = Process(command.spawn().expect("chromedriver starts"));
        let driver = Driver {
            process,
            port,
            _profile: TempDir::new("firedrill-chromium"),
        };
        let deadline = Instant::now() + STEP;
        let status = format!("http://127.0.0.1:{port}/status");
        let http = client();
        loop {
            let request = send(&http, Method::GET, &status, "");
            if let Ok(Ok((StatusCode::OK, _))) =
                tokio::time::timeout(Duration::from_secs(1), request).await
            {
                return Some(driver);
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A headless Chromium session.
    async fn browser(&self) -> Browser {
        let options = json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,900",
                format!("--user-data-dir={}", self._profile.path().display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(capabilities);
        let url = format!("http://127.0.0.1:{}", self.port);
        within(Duration::from_secs(60), builder.connect(&url))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's PID.
        let group = format!("-{}", self.process.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.process.0.wait();
    }
}

/// What the page shows: each tile's data center and state, and its
/// services' names and states, read from the data attributes.
async fn tiles(browser: &Browser) -> Value {
    let script = "return [...document.querySelectorAll('[data-datacenter]')].map(dc => ({ \
        name: dc.dataset.datacenter, state: dc.dataset.state, error_ratio: dc.dataset.errorRatio, \
        services: [...dc.querySelectorAll('[data-service]')].map(s => [s.dataset.service, s.dataset.state]) }));";
    within(STEP, browser.execute(script, Vec::new()))
        .await
        .expect("the page answers a script")
}

fn state(tiles: &Value, datacenter: &str) -> String {
    let tile = tiles
        .as_array()
        .and_then(|all| all.iter().find(|t| t["name"] == datacenter));
    tile.map_or("missing".to_owned(), |t| {
        t["state"].as_str().unwrap_or("?").to_owned()
    })
}

/// Polls the page until `wanted` holds of its tiles, for at most `limit`;
/// every reading must also pass `always`.
async fn wait_for_tiles(
    browser: &Browser,
    limit: Duration,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
    always: impl Fn(&Value) -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let now = tiles(browser).await;
        if let Err(broken) = always(&now) {
            panic!("{broken}: {now}");
        }
        if wanted(&now) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn others_healthy(tiles: &Value) -> Result<(), String> {
    match state(tiles, "ansan").as_str() {
        "healthy" => Ok(()),
        other => Err(format!("ansan reads {other}")),
    }
}

async fn text_of(browser: &Browser, selector: &str) -> String {
    let script =
        format!("const e = document.querySelector({selector:?}); return e ? e.textContent : '';");
    let value = within(STEP, browser.execute(&script, Vec::new()))
        .await
        .unwrap();
    value.as_str().unwrap_or_default().to_owned()
}

async fn screenshot(browser: &Browser, name: &str) -> std::path::PathBuf {
    let png = within(STEP, browser.screenshot())
        .await
        .expect("a screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    path
}

#[tokio::test]
async fn in_chromium_pangyo_goes_dark_within_3s_of_its_fire_and_recovers() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let running = gameday::plan("").await.start().await;
    let _traffic = Traffic::start(&running);
    let browser = driver.browser().await;
    within(
        STEP,
        browser.goto(&format!("http://{}/", running.admin_addr())),
    )
    .await
    .unwrap();
    let all_healthy = |tiles: &Value| {
        ["pangyo", "ansan"]
            .iter()
            .all(|dc| state(tiles, dc) == "healthy")
    };
    wait_for_tiles(
        &browser,
        STEP,
        "every tile healthy",
        all_healthy,
        |_| Ok(()),
    )
    .await;
    let shown = tiles(&browser).await;
    assert_eq!(
        shown[0]["services"],
        json!([["talk", "healthy"], ["maps", "healthy"]]),
        "{shown}"
    );
    assert_eq!(text_of(&browser, "#connection").await, "live");

    // The page notes the moment pangyo's tile turns dark, on the clock
    // this test reads too.
    let observe = "const tile = document.querySelector('[data-datacenter=pangyo]'); \
        window.darkAt = null; new MutationObserver(() => { \
        if (tile.dataset.state === 'dark' && window.darkAt === null) window.darkAt = Date.now(); \
        }).observe(tile, { attributes: true });";
    within(STEP, browser.execute(observe, Vec::new()))
        .await
        .unwrap();
    let sent = std::time::SystemTime::now();
    activate(&running, "pangyo-fire").await;
    let dark = |tiles: &Value| {
        state(tiles, "pangyo") == "dark"
            && tiles[0]["services"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s[1] == "dark"))
    };
    let took = wait_for_tiles(
        &browser,
        Duration::from_secs(3),
        "pangyo dark",
        dark,
        others_healthy,
    )
    .await;
    let dark_at = within(STEP, browser.execute("return window.darkAt;", Vec::new()))
        .await
        .unwrap();
    let sent_ms = sent
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let update = dark_at.as_u64().map(|at| i128::from(at) - sent_ms as i128);
    eprintln!("the page turned pangyo dark {update:?} ms after the POST was sent (read {took:?} after it was answered)");
    let card = text_of(&browser, "[data-scenario='pangyo-fire']").await;
    assert!(
        card.contains("pangyo-fire") && card.contains("blackhole on talk, maps"),
        "{card}"
    );
    let countdown = text_of(&browser, "[data-scenario='pangyo-fire'] .countdown").await;
    assert!(
        countdown.starts_with("9:") || countdown.starts_with("10:"),
        "{countdown}"
    );
    let timeline = text_of(&browser, "#timeline").await;
    assert!(timeline.contains("pangyo-fire activated by"), "{timeline}");
    // The picture once the charts show pangyo's errors at their height.
    let failing = |tiles: &Value| {
        let ratio = tiles[0]["error_ratio"]
            .as_str()
            .and_then(|r| r.parse::<f64>().ok());
        ratio.is_some_and(|r| r > 0.9)
    };
    wait_for_tiles(
        &browser,
        STEP,
        "pangyo's errors charted",
        failing,
        others_healthy,
    )
    .await;
    let path = screenshot(&browser, "status-page-dark.png").await;
    eprintln!("screenshot: {}", path.display());

    lift(&running, "pangyo-fire").await;
    // Failed requests leave the 5 s window a few seconds after the lift.
    wait_for_tiles(
        &browser,
        Duration::from_secs(20),
        "pangyo healthy",
        all_healthy,
        others_healthy,
    )
    .await;
    let active = text_of(&browser, "#active").await;
    assert!(active.starts_with("None"), "{active}");
    let timeline = text_of(&browser, "#timeline").await;
    assert!(timeline.contains("pangyo-fire lifted by"), "{timeline}");
    screenshot(&browser, "status-page-recovered.png").await;
    within(STEP, browser.close()).await.unwrap();
}

#[tokio::test]
async fn in_chromium_a_token_as_basic_credentials_opens_the_page_and_its_buttons() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let running = gameday::plan(TOKENS).await.start().await;
    let browser = driver.browser().await;
    let admin: SocketAddr = running.admin_addr();
    within(
        STEP,
        browser.goto(&format!("http://lead:s3cret-lead@{admin}/")),
    )
    .await
    .unwrap();
    // The tiles come from the stream, which the browser opened with the
    // credentials it was given for the page.
    let both = |tiles: &Value| {
        ["pangyo", "ansan"]
            .iter()
            .all(|dc| state(tiles, dc) == "healthy")
    };
    wait_for_tiles(&browser, STEP, "tiles from the stream", both, |_| Ok(())).await;

    let bearer = ("authorization", "Bearer s3cret-lead");
    let (code, _, body) = call(&running, Method::POST, "/faults/pangyo-fire", &[bearer]).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let card = "[data-scenario='pangyo-fire'] button";
    let deadline = Instant::now() + STEP;
    let button = loop {
        if let Ok(button) = browser.find(fantoccini::Locator::Css(card)).await {
            break button;
        }
        assert!(Instant::now() < deadline, "no Lift button on the page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut events = engine_events(&running);
    within(STEP, button.click()).await.unwrap();
    wait_for_event(&mut events, |e| {
        matches!(e.what, firedrill::engine::Happened::Lifted { .. })
    })
    .await;
    assert!(running.engine().active().is_empty());
    let (_, body) = admin_events(&running).await;
    assert!(body.contains("\"ended_by\":\"lead ("), "{body}");
    within(STEP, browser.close()).await.unwrap();
}

async fn admin_events(running: &Running) -> (StatusCode, String) {
    let (code, _, body) = call(
        running,
        Method::GET,
        "/events",
        &[("authorization", "Bearer s3cret-lead")],
    )
    .await;
    (code, body)
}

/// Waits for the page to open a dialog and returns its text.
async fn dialog(browser: &Browser) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(text) = browser.get_alert_text().await {
            return text;
        }
        assert!(Instant::now() < deadline, "no dialog opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn in_chromium_a_button_asks_for_the_token_the_api_wants_and_keeps_it() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let plan = format!("{TOKENS}; open_reads = true");
    let running = gameday::plan(&plan).await.start().await;
    let bearer = ("authorization", "Bearer s3cret-lead");
    let (code, _, body) = call(&running, Method::POST, "/faults/pangyo-fire", &[bearer]).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let browser = driver.browser().await;
    within(
        STEP,
        browser.goto(&format!("http://{}/", running.admin_addr())),
    )
    .await
    .unwrap();
    let dark = |tiles: &Value| state(tiles, "pangyo") == "dark";
    wait_for_tiles(&browser, STEP, "pangyo dark", dark, |_| Ok(())).await;

    let mut events = engine_events(&running);
    let halt = within(STEP, browser.find(fantoccini::Locator::Id("halt")))
        .await
        .unwrap();
    within(STEP, halt.click()).await.unwrap();
    assert_eq!(dialog(&browser).await, "Lift every active scenario now?");
    within(STEP, browser.accept_alert()).await.unwrap();
    // Reads are open, the halt is not: the page asks for a token.
    let asked = dialog(&browser).await;
    assert!(asked.contains("needs a token"), "{asked}");
    within(STEP, browser.send_alert_text("s3cret-lead"))
        .await
        .unwrap();
    within(STEP, browser.accept_alert()).await.unwrap();
    let halted = wait_for_event(&mut events, |e| {
        matches!(e.what, firedrill::engine::Happened::Halted { .. })
    })
    .await;
    let firedrill::engine::Happened::Halted { by, lifted } = halted.what else {
        unreachable!("waited for a halt");
    };
    assert!(by.starts_with("lead ("), "{by}");
    assert_eq!(lifted.len(), 1);
    let message = text_of(&browser, "#message").await;
    assert_eq!(message, "halted: pangyo-fire");

    // The token stays in the page's memory: the next button asks nothing.
    within(
        STEP,
        browser.find(fantoccini::Locator::Css("#trigger button")),
    )
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_for_event(&mut events, |e| {
        matches!(&e.what, firedrill::engine::Happened::Activated { by, .. } if by.starts_with("lead ("))
    })
    .await;
    // Stored nowhere the browser keeps.
    let stored = within(
        STEP,
        browser.execute(
            "return localStorage.length + sessionStorage.length + document.cookie.length;",
            Vec::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(stored, json!(0));
    within(STEP, browser.close()).await.unwrap();
}

/// A TCP relay in front of the admin API that can cut every connection
/// through it at once, as a flaky network or a restarting load balancer
/// would.
struct Relay {
    addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cut, _) = tokio::sync::watch::channel(0);
        let (counted, cuts) = (accepted.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut cut = cuts.subscribe();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    // Dropping both sockets closes them.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay {
            addr,
            accepted,
            cut,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes every connection open through the relay now.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn in_chromium_a_dropped_stream_reconnects_by_itself() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let running = gameday::plan("").await.start().await;
    let relay = Relay::to(running.admin_addr()).await;
    let browser = driver.browser().await;
    within(STEP, browser.goto(&format!("http://{}/", relay.addr)))
        .await
        .unwrap();
    let healthy = |tiles: &Value| state(tiles, "pangyo") == "healthy";
    wait_for_tiles(&browser, STEP, "pangyo healthy", healthy, |_| Ok(())).await;
    let before = relay.accepted();

    relay.cut();
    activate(&running, "pangyo-fire").await;
    // Only a stream opened again through the relay can bring this news.
    let dark = |tiles: &Value| state(tiles, "pangyo") == "dark";
    wait_for_tiles(
        &browser,
        STEP,
        "pangyo dark after the cut",
        dark,
        |_| Ok(()),
    )
    .await;
    assert!(relay.accepted() > before, "the page connected again");
    assert_eq!(text_of(&browser, "#connection").await, "live");
    within(STEP, browser.close()).await.unwrap();
}
