use super::events as events_table;
use super::*;
use crate::admin::api::{
    Action, ActivateAnswer, Activation, ActivationFault, DataCenterStatus, EventRecord, Guard,
    HaltAnswer, LiftAnswer, Origin, ServiceFault, ServiceStatus, Status, Stop,
};

fn drop_action() -> Action {
    Action {
        action: "drop".to_owned(),
        probability: 1.0,
        latency: None,
        jitter: None,
        direction: None,
        status: None,
    }
}

fn service(
    name: &str,
    protocol: &str,
    state: &str,
    rate: f64,
    ratio: Option<f64>,
) -> ServiceStatus {
    ServiceStatus {
        name: name.to_owned(),
        protocol: protocol.to_owned(),
        state: state.to_owned(),
        requests_per_second: rate,
        connections_per_second: rate / 10.0,
        connections_open: 3,
        error_ratio: ratio,
        p99_seconds: ratio.map(|_| 0.012),
        faults: Vec::new(),
    }
}

fn guard(name: &str, kind: &str, state: &str, value: Option<f64>, above: f64) -> Guard {
    Guard {
        name: name.to_owned(),
        kind: kind.to_owned(),
        state: state.to_owned(),
        value,
        above,
        hold: "20s".to_owned(),
        pending_for: (state == "pending").then(|| "3s".to_owned()),
        detail: "services outside the scenario over 30s".to_owned(),
    }
}

fn activation() -> Activation {
    Activation {
        scenario: "pangyo-fire".to_owned(),
        description: String::new(),
        started_at: "2026-12-03T16:20:00.000Z".to_owned(),
        expires_at: "2026-12-03T16:30:00.000Z".to_owned(),
        remaining: "9m 12s".to_owned(),
        activated_by: "lead (127.0.0.1:5000)".to_owned(),
        origin: Origin::Local,
        faults: vec![ActivationFault {
            action: drop_action(),
            index: 0,
            datacenters: vec!["pangyo".to_owned()],
            services: vec!["talk".to_owned(), "chat".to_owned()],
            starts_at: Some("2026-12-03T16:20:00.000Z".to_owned()),
            ends_at: Some("2026-12-03T16:30:00.000Z".to_owned()),
            state: "active".to_owned(),
        }],
        guards: vec![
            guard("ansan-stays-up", "error_ratio", "ok", Some(0.0021), 0.05),
            guard("maps-latency", "p99_latency", "pending", Some(0.93), 0.8),
            guard("checkout-slo", "prometheus", "error", None, 1.0),
        ],
    }
}

fn pangyo_dark() -> Status {
    let fault = ServiceFault {
        action: drop_action(),
        scenario: "pangyo-fire".to_owned(),
        index: 0,
    };
    let mut talk = service("talk", "http", "dark", 60.0, Some(1.0));
    talk.p99_seconds = None;
    talk.faults = vec![fault.clone()];
    let mut chat = service("chat", "tcp", "dark", 20.0, None);
    chat.faults = vec![fault];
    Status {
        at: "2026-12-03T16:20:48.000Z".to_owned(),
        window: "10s".to_owned(),
        datacenters: vec![
            DataCenterStatus {
                name: "pangyo".to_owned(),
                description: String::new(),
                state: "dark".to_owned(),
                requests_per_second: 60.0,
                error_ratio: Some(1.0),
                p99_seconds: None,
                services: vec![talk, chat],
            },
            DataCenterStatus {
                name: "ansan".to_owned(),
                description: String::new(),
                state: "healthy".to_owned(),
                requests_per_second: 120.5,
                error_ratio: Some(0.0),
                p99_seconds: Some(1.25),
                services: vec![service("maps", "http", "healthy", 120.5, Some(0.0))],
            },
        ],
        active: vec![activation()],
    }
}

#[test]
fn the_status_table_shows_each_data_center_its_services_and_the_active_scenarios() {
    let expected = "\
at 2026-12-03T16:20:48.000Z, over the last 10s

DATA CENTER / SERVICE  STATE    RATE         ERRORS  P99    FAULTS
pangyo                 dark      60.0 req/s  100.0%      -
  talk (http)          dark      60.0 req/s  100.0%      -  drop (pangyo-fire)
  chat (tcp)           dark      2.0 conn/s       -      -  drop (pangyo-fire); 3 open
ansan                  healthy  120.5 req/s    0.0%  1.25s
  maps (http)          healthy  120.5 req/s    0.0%   12ms

ACTIVE / GUARD          STATE    VALUE  ABOVE  DETAIL
pangyo-fire             active                 9m 12s left, until 2026-12-03T16:30:00.000Z, by lead (127.0.0.1:5000)
  guard ansan-stays-up  ok        0.2%   5.0%  services outside the scenario over 30s
  guard maps-latency    pending  930ms  800ms  held 3s of 20s; services outside the scenario over 30s
  guard checkout-slo    error        -      1  services outside the scenario over 30s
";
    assert_eq!(status(&pangyo_dark(), false), expected);
}

#[test]
fn on_a_terminal_states_are_coloured_by_what_they_mean() {
    let text = status(&pangyo_dark(), true);
    assert!(text.contains("\x1b[1;31mdark\x1b[0m"), "{text}");
    assert!(text.contains("\x1b[32mhealthy\x1b[0m"), "{text}");
    assert!(text.contains("\x1b[33mpending\x1b[0m"), "{text}");
}

#[test]
fn without_an_active_scenario_the_status_says_so() {
    let mut quiet = pangyo_dark();
    quiet.active.clear();
    assert!(status(&quiet, false).ends_with("\nNo scenario is active.\n"));
}

fn event(ended: Option<&str>) -> EventRecord {
    EventRecord {
        scenario: "pangyo-fire".to_owned(),
        activated_by: "lead".to_owned(),
        started_at: "T1".to_owned(),
        expires_at: "T9".to_owned(),
        ended_at: ended.map(|_| "T2".to_owned()),
        ended: ended.map(str::to_owned),
        ended_by: (ended == Some("lifted")).then(|| "bot".to_owned()),
        time: 1,
        time_end: ended.map(|_| 2),
        stopped_by: (ended == Some("stopped")).then(|| Stop {
            guard: "ansan-stays-up".to_owned(),
            value: Some(0.125),
            above: 0.05,
            detail: "error ratio outside".to_owned(),
        }),
    }
}

#[test]
fn events_say_how_each_activation_ended_and_which_guard_stopped_one() {
    let events = [
        event(None),
        event(Some("stopped")),
        event(Some("lifted")),
        event(Some("expired")),
    ];
    let expected = "\
STARTED  SCENARIO     BY    ENDED    ENDED AT  WHY
T1       pangyo-fire  lead  active   -         until T9
T1       pangyo-fire  lead  stopped  T2        guard ansan-stays-up: 0.125 above 0.05 (error ratio outside)
T1       pangyo-fire  lead  lifted   T2        by bot
T1       pangyo-fire  lead  expired  T2
";
    assert_eq!(events_table(&events), expected);
    assert_eq!(events_table(&[]), "No activation yet.\n");
}

#[test]
fn an_event_stopped_without_a_reading_says_it_could_not_read() {
    let mut stopped = event(Some("stopped"));
    if let Some(stop) = &mut stopped.stopped_by {
        stop.value = None;
        stop.detail = "prometheus could not be read".to_owned();
    }
    let table = events_table(&[stopped]);
    assert!(
        table.contains("guard ansan-stays-up: could not read (prometheus could not be read)\n"),
        "{table}"
    );
}

fn answer(status: &str) -> ActivateAnswer {
    ActivateAnswer {
        activation: activation(),
        status: status.to_owned(),
        previous_expires_at: (status == "extended").then(|| "T5".to_owned()),
        already_active: status != "activated",
        capped: status == "extended",
        requested_duration: Some("1h".to_owned()),
    }
}

#[test]
fn trigger_says_what_it_did_until_when_and_each_faults_window() {
    assert_eq!(
        triggered(&answer("activated")),
        "pangyo-fire activated until 2026-12-03T16:30:00.000Z (9m 12s left), by lead (127.0.0.1:5000)\n  \
         drop on talk, chat in pangyo from 2026-12-03T16:20:00.000Z until 2026-12-03T16:30:00.000Z: active\n"
    );
    let extended = triggered(&answer("extended"));
    assert!(
        extended.starts_with(
            "pangyo-fire extended: now until 2026-12-03T16:30:00.000Z (9m 12s left); it was to end at T5\n  \
             capped: the scenario's max_duration is shorter than 1h\n"
        ),
        "{extended}"
    );
    assert_eq!(
        triggered(&answer("lifted")),
        "pangyo-fire lifted: it had already run longer than 1h\n"
    );
}

#[test]
fn lift_says_whether_there_was_anything_to_lift() {
    let lift = |lifted| LiftAnswer {
        scenario: "pangyo-fire".to_owned(),
        lifted,
    };
    assert_eq!(lifted(&lift(true)), "pangyo-fire lifted\n");
    assert_eq!(
        lifted(&lift(false)),
        "pangyo-fire was not active; nothing to lift\n"
    );
    let halt = |names: &[&str]| HaltAnswer {
        lifted: names.iter().map(|n| n.to_string()).collect(),
    };
    assert_eq!(halted(&halt(&["a", "b"])), "lifted a, b\n");
    assert_eq!(halted(&halt(&[])), "Nothing was active; nothing to lift.\n");
}

#[test]
fn actions_read_as_the_plan_writes_them() {
    let delay = Action {
        action: "delay".to_owned(),
        probability: 0.25,
        latency: Some("200ms".to_owned()),
        jitter: Some("50ms".to_owned()),
        direction: Some("upstream".to_owned()),
        status: None,
    };
    assert_eq!(action(&delay), "delay 200ms ±50ms upstream p=0.25");
    let error = Action {
        action: "error".to_owned(),
        status: Some(503),
        ..drop_action()
    };
    assert_eq!(action(&error), "error 503");
}
