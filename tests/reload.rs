//! Plan reload: `POST /reload` and SIGHUP re-read the plan file. An invalid
//! plan changes nothing; a valid one keeps the open connections of services
//! that stayed as they were, and lifts active scenarios it no longer has.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use firedrill::Running;
use support::*;

/// A plan file in its own folder, and firedrill started from it.
struct Reloadable {
    _dir: TempDir,
    path: PathBuf,
    running: Running,
}

impl Reloadable {
    async fn start(plan: &PlanText) -> Reloadable {
        let dir = TempDir::new("reload");
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, plan.toml()).unwrap();
        let loaded = firedrill::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let running = firedrill::start_reloadable(loaded, path.clone())
            .await
            .expect("firedrill starts");
        Reloadable {
            _dir: dir,
            path,
            running,
        }
    }

    /// Rewrites the plan file and asks for a reload over the admin API.
    async fn reload(&self, plan: &str) -> (StatusCode, serde_json::Value) {
        write(&self.path, plan);
        admin(&self.running, Method::POST, "/reload", "").await
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn names(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_invalid_plan_changes_nothing_and_says_where_it_is_wrong() {
    let echo = echo_upstream().await;
    let plan = PlanText::new(&["pangyo"])
        .tcp("cache", "pangyo", echo)
        .fault("fire", "cache", "action = 'blackhole'");
    let firedrill = Reloadable::start(&plan).await;
    let mut open = connect(addr(&firedrill.running, "cache")).await;
    carry_echo(&mut open, b"before").await;

    let broken = format!(
        "{}\n[scenarios.typo]\nmax_duration = 'soon'\n[services.extra]\nprotocol = 'udp'\n",
        plan.toml()
    );
    let (status, answer) = firedrill.reload(&broken).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let errors = answer["errors"].as_array().expect("errors listed");
    assert_eq!(errors.len(), 2, "{answer}");
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    let typo_line = broken.lines().position(|l| l.contains("'soon'")).unwrap() + 1;
    assert!(lines.contains(&(typo_line as u64)), "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("nothing changed"),
        "{answer}"
    );
    assert!(errors
        .iter()
        .all(|e| e["file"].as_str().unwrap().ends_with("plan.toml")));

    // Still the old plan: the connection lives and the old scenario works.
    carry_echo(&mut open, b"after").await;
    let (_, scenarios) = admin(&firedrill.running, Method::GET, "/scenarios", "").await;
    assert_eq!(scenarios["scenarios"].as_array().unwrap().len(), 1);
    activate(&firedrill.running, "fire").await;
    // Blackholed: what is written gets no echo, and the connection stays.
    open.write_all(b"into the dark").await.unwrap();
    let heard = closed_within(&mut open, Duration::from_millis(500)).await;
    assert!(heard.is_none(), "blackholed: {heard:?}");
}

#[tokio::test]
async fn kept_services_keep_their_connections_and_faults() {
    let echo = echo_upstream().await;
    let web = http_upstream("web").await;
    let plan = PlanText::new(&["pangyo", "ansan"])
        .tcp("cache", "pangyo", echo)
        .http("talk", "ansan", web)
        .scenario(
            "slow",
            &["service = 'cache'; action = 'delay'; latency = '300ms'"],
        )
        .fault("gone-soon", "talk", "action = 'error'; status = 503");
    let firedrill = Reloadable::start(&plan).await;
    let running = &firedrill.running;
    let cache = addr(running, "cache");
    let talk = addr(running, "talk");
    let mut open = connect(cache).await;
    carry_echo(&mut open, b"warm").await;
    // A kept-alive HTTP client: its connection must survive too.
    let kept_alive = client();
    let (status, body) = send(&kept_alive, Method::GET, &format!("http://{talk}/a"), "")
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web answered GET /a\n")
    );
    activate(running, "slow").await;
    activate(running, "gone-soon").await;

    // Same services; a new description and a new scenario; `gone-soon` is gone.
    let next = PlanText::new(&["pangyo", "ansan"])
        .tcp("cache", "pangyo", echo)
        .http("talk", "ansan", web)
        .scenario(
            "slow",
            &["service = 'cache'; action = 'delay'; latency = '300ms'"],
        )
        .fault("new-one", "talk", "action = 'drop'");
    // The plan text uses port 0; the kept services keep their bound ports.
    let (status, answer) = firedrill.reload(next.toml()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let reloaded = &answer["reloaded"];
    assert_eq!(names(&reloaded["kept"]), ["cache", "talk"], "{answer}");
    assert_eq!(names(&reloaded["lifted"]), ["gone-soon"], "{answer}");
    assert!(names(&reloaded["added"]).is_empty(), "{answer}");
    assert_eq!(addr(running, "cache"), cache);
    assert_eq!(addr(running, "talk"), talk);

    // The open connection is still there and still delayed by `slow`.
    let took = carry_echo(&mut open, b"still here").await;
    assert!(took >= Duration::from_millis(250), "delay kept: {took:?}");
    // `gone-soon` was lifted: talk answers again, on the same connection.
    let (status, _) = send(&kept_alive, Method::GET, &format!("http://{talk}/b"), "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (_, events) = admin(running, Method::GET, "/events", "").await;
    let lifted = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["scenario"] == "gone-soon")
        .expect("gone-soon in the history");
    assert_eq!(lifted["ended"], "lifted", "{events}");
    let (_, active) = admin(running, Method::GET, "/faults", "").await;
    let active: Vec<&str> = active["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["slow"]);
    // The new scenario exists and works.
    activate(running, "new-one").await;
    let refused = send(&client(), Method::GET, &format!("http://{talk}/c"), "").await;
    assert!(refused.is_err(), "dropped: {refused:?}");
}

#[tokio::test]
async fn changed_added_and_removed_services() {
    let old_echo = echo_upstream().await;
    let new_echo = echo_upstream().await;
    let web = http_upstream("web").await;
    let plan = PlanText::new(&["pangyo"])
        .tcp("cache", "pangyo", old_echo)
        .http("talk", "pangyo", web);
    let firedrill = Reloadable::start(&plan).await;
    let running = &firedrill.running;
    let talk = addr(running, "talk");
    let cache = addr(running, "cache");
    let mut to_old = connect(cache).await;
    carry_echo(&mut to_old, b"old").await;

    // The cache now points elsewhere (on a fixed port, so the listener is
    // the same); talk is removed; mail is added.
    let fixed = cache.to_string();
    let next = PlanText::new(&["pangyo"])
        .http("mail", "pangyo", web)
        .toml()
        .to_owned()
        + &format!(
            "[services.cache]\ndatacenter = 'pangyo'\nprotocol = 'tcp'\nlisten = '{fixed}'\nupstream = '{new_echo}'\n"
        );
    // First make the running plan name the fixed port, so only the upstream
    // differs in the second reload.
    let pinned = PlanText::new(&["pangyo"]).http("talk", "pangyo", web).toml().to_owned()
        + &format!(
            "[services.cache]\ndatacenter = 'pangyo'\nprotocol = 'tcp'\nlisten = '{fixed}'\nupstream = '{old_echo}'\n"
        );
    let (status, answer) = firedrill.reload(&pinned).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Naming the port it was given is the same listener.
    assert_eq!(
        names(&answer["reloaded"]["kept"]),
        ["talk", "cache"],
        "{answer}"
    );
    carry_echo(&mut to_old, b"pinned").await;

    let (status, answer) = firedrill.reload(&next).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let reloaded = &answer["reloaded"];
    assert_eq!(names(&reloaded["changed"]), ["cache"], "{answer}");
    assert_eq!(names(&reloaded["added"]), ["mail"], "{answer}");
    assert_eq!(names(&reloaded["removed"]), ["talk"], "{answer}");
    assert_eq!(addr(running, "cache"), cache, "same listener");
    assert!(running.service_addr("talk").is_none());

    // The connection to the old upstream is closed; new ones reach the new.
    let ended = closed_within(&mut to_old, STEP).await;
    assert!(
        matches!(ended, Some(Ok(0)) | Some(Err(_))),
        "old connection closed: {ended:?}"
    );
    let mut to_new = connect(cache).await;
    carry_echo(&mut to_new, b"new").await;
    let (status, body) = get(addr(running, "mail"), "/m").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web answered GET /m\n")
    );
    let refused = tokio::net::TcpStream::connect(talk).await;
    assert!(refused.is_err(), "talk's listener is closed");
}

#[tokio::test]
async fn a_taken_port_fails_the_reload_as_a_whole() {
    let web = http_upstream("web").await;
    let plan = PlanText::new(&["pangyo"])
        .http("talk", "pangyo", web)
        .fault("fire", "talk", "action = 'drop'");
    let firedrill = Reloadable::start(&plan).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let next = format!(
        "{}[services.mail]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '{port}'\nupstream = '{web}'\n",
        PlanText::new(&["pangyo"]).http("talk", "pangyo", web).toml()
    );
    let (status, answer) = firedrill.reload(&next).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains(&port.to_string()) && error.contains("nothing changed"),
        "{error}"
    );
    // The old plan still runs: its scenario exists, mail does not.
    assert!(firedrill.running.service_addr("mail").is_none());
    activate(&firedrill.running, "fire").await;
}

#[tokio::test]
async fn a_firedrill_started_without_a_file_says_it_cannot_reload() {
    let web = http_upstream("web").await;
    let running = PlanText::new(&["pangyo"])
        .http("talk", "pangyo", web)
        .start()
        .await;
    let (status, answer) = admin(&running, Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("without a plan file"));
}

/// The real binary re-reads its plan on SIGHUP, and keeps running on an
/// invalid one.
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let web = http_upstream("web").await;
    let dir = TempDir::new("sighup");
    let path = dir.path().join("plan.toml");
    // A fixed admin port is needed to reach the child; take one the kernel
    // hands out and free it just before the child binds it.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let plan = |extra: &str| {
        PlanText::new(&["pangyo"])
            .http("talk", "pangyo", web)
            .fault("fire", "talk", "action = 'drop'")
            .toml()
            // The admin table comes first.
            .replacen("127.0.0.1:0", &admin_port.to_string(), 1)
            + extra
    };
    write(&path, &plan(""));
    let child = Command::new(env!("CARGO_BIN_EXE_firedrill"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("firedrill starts");
    let mut child = Process(child);
    let log = collect(child.0.stderr.take().unwrap());
    let scenarios = || async move {
        let url = format!("http://{admin_port}/scenarios");
        let (_, text) = send(&client(), Method::GET, &url, "").await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(
            json["scenarios"]
                .as_array()?
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
        )
    };
    let hup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    within(STEP, async {
        while scenarios().await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(scenarios().await.unwrap(), ["fire"]);

    // An invalid plan: logged, nothing changes, the process lives on.
    write(&path, &plan("[scenarios.bad]\nmax_duration = 'x'\n"));
    hup(child.0.id());
    // A valid one adds a scenario.
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(
        &path,
        &plan("[[scenarios.calm.faults]]\nservice = 'talk'\naction = 'delay'\nlatency = '1ms'\n"),
    );
    hup(child.0.id());
    within(STEP, async {
        while scenarios().await.as_deref() != Some(&["fire".to_owned(), "calm".to_owned()][..]) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let exited = child.wait_within(STEP).expect("firedrill exits on SIGTERM");
    assert!(exited.success(), "{exited:?}");
    let log = log.join().unwrap();
    assert!(log.contains("reload failed"), "{log}");
    assert!(log.contains("plan.toml"), "the error names the file: {log}");
    assert!(log.contains("plan reloaded"), "{log}");
}

/// A leaked token is revoked by a reload; the admin API cannot move.
#[tokio::test]
async fn a_reload_revokes_tokens_but_cannot_move_the_admin_api() {
    let web = http_upstream("web").await;
    let dir = TempDir::new("revoke");
    let leaked = dir.path().join("leaked.token");
    let fresh = dir.path().join("fresh.token");
    write(&leaked, "leaked-value\n");
    write(&fresh, "fresh-value\n");
    let plan = |tokens: &str| {
        PlanText::with_admin(&format!("tokens = [{tokens}]"), &["pangyo"])
            .http("talk", "pangyo", web)
            .fault("fire", "talk", "action = 'drop'")
    };
    let both = format!(
        "{{ name = 'old', value_file = '{}' }}, {{ name = 'new', value_file = '{}' }}",
        leaked.display(),
        fresh.display()
    );
    let firedrill = Reloadable::start(&plan(&both)).await;
    let running = &firedrill.running;
    let call = |token: &'static str| async move {
        let url = format!("http://{}/faults", running.admin_addr());
        let request = http::Request::get(&url)
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        within(STEP, client().request(request))
            .await
            .unwrap()
            .status()
    };
    let reload = |token: &'static str| async move {
        let url = format!("http://{}/reload", running.admin_addr());
        let request = http::Request::post(&url)
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = within(STEP, client().request(request)).await.unwrap();
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(call("leaked-value").await, StatusCode::OK);
    // Reload needs a token like every other change.
    let (status, _) = reload("wrong").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let only_new = format!("{{ name = 'new', value_file = '{}' }}", fresh.display());
    write(&firedrill.path, plan(&only_new).toml());
    let (status, body) = reload("fresh-value").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(call("leaked-value").await, StatusCode::FORBIDDEN);
    assert_eq!(call("fresh-value").await, StatusCode::OK);
    assert!(
        !body.contains("fresh-value"),
        "no token value in the answer: {body}"
    );

    // Moving the admin API needs a restart: nothing changes.
    let moved = plan(&only_new)
        .toml()
        .replacen("127.0.0.1:0", "127.0.0.2:0", 1);
    write(&firedrill.path, &moved);
    let (status, body) = reload("fresh-value").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("restart"), "{body}");
    assert_eq!(call("fresh-value").await, StatusCode::OK);
}

/// A kept service goes on counting its open connections against
/// `max_connections` across a reload.
#[tokio::test]
async fn a_kept_service_keeps_counting_its_connections() {
    let echo = echo_upstream().await;
    let plan =
        PlanText::new(&["pangyo"]).service("cache", "pangyo", "tcp", echo, "max_connections = 1");
    let firedrill = Reloadable::start(&plan).await;
    let cache = addr(&firedrill.running, "cache");
    let mut first = connect(cache).await;
    carry_echo(&mut first, b"one").await;
    let (status, answer) = firedrill.reload(plan.toml()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(names(&answer["reloaded"]["kept"]), ["cache"]);
    let mut second = connect(cache).await;
    let refused = closed_within(&mut second, STEP).await;
    assert!(
        matches!(refused, Some(Ok(0)) | Some(Err(_))),
        "over the cap after the reload: {refused:?}"
    );
    carry_echo(&mut first, b"still one").await;
}

/// A kept service's cap follows a changed `max_connections`: raised, it
/// admits more at once; lowered below the connections open, it admits no
/// one until enough of them have closed.
#[tokio::test]
async fn a_kept_service_takes_up_a_changed_max_connections() {
    const ACTIVE: &str = "firedrill_connections_active";
    let echo = echo_upstream().await;
    let name = unique("cache");
    let plan = |cap: u32| {
        let extra = format!("max_connections = {cap}");
        PlanText::new(&["pangyo"]).service(&name, "pangyo", "tcp", echo, &extra)
    };
    let firedrill = Reloadable::start(&plan(1)).await;
    let cache = addr(&firedrill.running, &name);
    let mut open = vec![connect(cache).await];
    carry_echo(&mut open[0], b"one").await;
    assert_refused(cache, "one open, cap one").await;

    let (status, answer) = firedrill.reload(plan(3).toml()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(names(&answer["reloaded"]["kept"]), [name.as_str()]);
    for data in [b"two", b"six"] {
        let mut stream = connect(cache).await;
        carry_echo(&mut stream, data).await;
        open.push(stream);
    }
    assert_refused(cache, "three open, cap three").await;

    let (status, answer) = firedrill.reload(plan(1).toml()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let labels = [("service", name.as_str())];
    for left in [2.0, 1.0] {
        drop(open.pop());
        wait_for_sample(&firedrill.running, ACTIVE, &labels, left).await;
        assert_refused(cache, &format!("{left} open, cap one")).await;
    }
    for stream in &mut open {
        carry_echo(stream, b"still relaying").await;
    }
    drop(open.pop());
    wait_for_sample(&firedrill.running, ACTIVE, &labels, 0.0).await;
    let mut last = connect(cache).await;
    carry_echo(&mut last, b"room again").await;
}

/// Asserts that a new connection to `addr` is refused (closed or reset).
async fn assert_refused(addr: std::net::SocketAddr, what: &str) {
    assert_closed(&mut connect(addr).await, STEP, what).await;
}

/// Two new services that would take the same running listener (one by
/// name on port 0, one by naming the port it was given) fail the reload.
#[tokio::test]
async fn two_services_cannot_take_one_listener() {
    let web = http_upstream("web").await;
    let plan = PlanText::new(&["pangyo"]).http("talk", "pangyo", web);
    let firedrill = Reloadable::start(&plan).await;
    let talk = addr(&firedrill.running, "talk");
    let next = format!(
        "{}[services.mail]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '{talk}'\nupstream = '{web}'\n",
        plan.toml()
    );
    let (status, answer) = firedrill.reload(&next).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("`talk`") && error.contains("`mail`") && error.contains("nothing changed"),
        "{error}"
    );
    // Still serving, and a later reload still works.
    let (status, body) = get(talk, "/x").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web answered GET /x\n")
    );
    let (status, answer) = firedrill.reload(plan.toml()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(names(&answer["reloaded"]["kept"]), ["talk"]);
}

#[tokio::test]
async fn a_reload_answers_with_the_new_plans_warnings() {
    let web = http_upstream("web").await;
    let plan = PlanText::new(&["pangyo"]).http("talk", "pangyo", web);
    let firedrill = Reloadable::start(&plan).await;
    let outlasting = plan.toml().to_owned()
        + "[scenarios.drill]\nmax_duration = '10m'\n[[scenarios.drill.faults]]\nservice = 'talk'\naction = 'drop'\nafter = '5m'\nduration = '1h'\n";
    let line = outlasting.lines().count();

    let (status, answer) = firedrill.reload(&outlasting).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let warnings = names(&answer["reloaded"]["warnings"]);
    let at = format!("{}:{line}:12: ", firedrill.path.display());
    assert_eq!(warnings.len(), 1, "{answer}");
    assert!(
        warnings[0].starts_with(&at)
            && warnings[0].contains("past the scenario's max_duration of 10m"),
        "{answer}"
    );
    // The plan still applies as written.
    let (status, scenarios) = admin(&firedrill.running, Method::GET, "/scenarios", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(scenarios.to_string().contains("drill"), "{scenarios}");
}
