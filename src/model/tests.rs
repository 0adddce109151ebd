//! The diff's rules and the model's changes, without a socket: bound
//! addresses are made up.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config;

/// A plan of services, each `(name, listen, upstream, extra lines)`, with
/// a scenario `fire` that blackholes `talk` when the plan has it.
fn plan_of(services: &[(&str, &str, &str, &str)]) -> Arc<Plan> {
    let mut text = String::from("[admin]\nlisten = '127.0.0.1:0'\n[datacenters.pangyo]\n");
    for (name, listen, upstream, extra) in services {
        text += &format!(
            "[services.{name}]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '{listen}'\nupstream = '{upstream}'\n{extra}\n"
        );
    }
    if services.iter().any(|(name, ..)| *name == "talk") {
        text +=
            "[scenarios.fire]\n[[scenarios.fire.faults]]\nservice = 'talk'\naction = 'blackhole'\n";
    }
    Arc::new(config::parse(&text, "plan.toml").unwrap_or_else(|e| panic!("{e}")))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The model of `plan` as started, port 0 given port 40000 + index.
fn started(plan: &Arc<Plan>) -> Model {
    let bound: Vec<SocketAddr> = (plan.topology.services.iter().enumerate())
        .map(|(i, s)| match s.listen.port() {
            0 => SocketAddr::new(s.listen.ip(), 40000 + i as u16),
            _ => s.listen,
        })
        .collect();
    Model::new(Arc::clone(plan), &bound)
}

/// Binds nothing: a made-up address per added service.
fn fake_bind(service: &Service) -> Result<SocketAddr, String> {
    Ok(SocketAddr::new(service.listen.ip(), 50000))
}

fn fates(diff: &Diff) -> [Vec<&str>; 4] {
    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    [
        names(&diff.kept),
        names(&diff.changed),
        names(&diff.added),
        names(&diff.removed),
    ]
}

const WEB: &str = "127.0.0.1:9001";

#[test]
fn the_same_plan_keeps_every_service_with_its_slot_and_address() {
    let plan = plan_of(&[
        ("talk", "127.0.0.1:0", WEB, ""),
        ("mail", "127.0.0.1:8025", WEB, ""),
    ]);
    let model = started(&plan);
    let diff = diff(
        &model,
        plan_of(&[
            ("talk", "127.0.0.1:0", WEB, ""),
            ("mail", "127.0.0.1:8025", WEB, "max_connections = 5"),
        ]),
    )
    .unwrap();
    assert_eq!(fates(&diff), [vec!["talk", "mail"], vec![], vec![], vec![]]);
    let next = model.next(&diff.changes, fake_bind).unwrap();
    let talk = next.service("talk").unwrap();
    assert_eq!((talk.slot, talk.bound), (0, addr("127.0.0.1:40000")));
    let mail = next.service("mail").unwrap();
    assert_eq!(mail.slot, 1);
    assert_eq!(mail.service.limits.max_connections, 5, "new settings apply");
    // The plan as validated, not rewritten with the bound port.
    assert_eq!(talk.service.listen, addr("127.0.0.1:0"));
}

#[test]
fn a_service_renamed_or_pointed_elsewhere_on_its_listener_is_changed_and_gets_a_new_slot() {
    let plan = plan_of(&[
        ("talk", "127.0.0.1:8001", WEB, ""),
        ("mail", "127.0.0.1:8025", WEB, ""),
    ]);
    let model = started(&plan);
    let next_plan = plan_of(&[
        ("chat", "127.0.0.1:8001", WEB, ""),
        ("mail", "127.0.0.1:8025", "127.0.0.1:9002", ""),
    ]);
    let diff = diff(&model, next_plan).unwrap();
    assert_eq!(fates(&diff), [vec![], vec!["chat", "mail"], vec![], vec![]]);
    assert!(matches!(
        &diff.changes[0],
        Change::Replace { name, with, connections: Connections::Close }
            if &**name == "talk" && &*with.name == "chat"
    ));
    let next = model.next(&diff.changes, fake_bind).unwrap();
    assert_eq!(next.service("chat").unwrap().slot, 2);
    assert_eq!(next.service("mail").unwrap().slot, 3);
    assert_eq!(next.service("chat").unwrap().bound, addr("127.0.0.1:8001"));
    assert!(next.service("talk").is_none());
}

#[test]
fn a_stricter_upstream_check_is_another_service() {
    let https = "https://127.0.0.1:8443";
    let plan = plan_of(&[("talk", "127.0.0.1:0", https, "upstream_skip_verify = true")]);
    let model = started(&plan);
    let same = diff(
        &model,
        plan_of(&[("talk", "127.0.0.1:0", https, "upstream_skip_verify = true")]),
    )
    .unwrap();
    assert_eq!(fates(&same), [vec!["talk"], vec![], vec![], vec![]]);
    let stricter = diff(
        &model,
        plan_of(&[("talk", "127.0.0.1:0", https, "upstream_skip_verify = false")]),
    )
    .unwrap();
    assert_eq!(fates(&stricter), [vec![], vec!["talk"], vec![], vec![]]);
    let renamed = diff(
        &model,
        plan_of(&[(
            "talk",
            "127.0.0.1:0",
            https,
            "upstream_skip_verify = true\nupstream_server_name = 'other.example'",
        )]),
    )
    .unwrap();
    assert_eq!(fates(&renamed), [vec![], vec!["talk"], vec![], vec![]]);
    // Which CA is trusted is a setting new connections pick up.
    let verified = plan_of(&[("talk", "127.0.0.1:0", https, "")]);
    let model = started(&verified);
    let mut other_ca = Arc::try_unwrap(plan_of(&[("talk", "127.0.0.1:0", https, "")])).unwrap();
    let tls = other_ca.topology.services[0].upstream_tls.as_mut().unwrap();
    tls.ca = Some(crate::topology::Pem {
        path: "staging-ca.pem".into(),
        text: Arc::from(&b"-----BEGIN CERTIFICATE-----"[..]),
    });
    let kept = diff(&model, Arc::new(other_ca)).unwrap();
    assert_eq!(fates(&kept), [vec!["talk"], vec![], vec![], vec![]]);
}

#[test]
fn new_services_are_added_and_missing_ones_removed() {
    let plan = plan_of(&[
        ("talk", "127.0.0.1:0", WEB, ""),
        ("mail", "127.0.0.1:0", WEB, ""),
    ]);
    let model = started(&plan);
    let diff = diff(
        &model,
        plan_of(&[
            ("talk", "127.0.0.1:0", WEB, ""),
            ("maps", "127.0.0.1:0", WEB, ""),
        ]),
    )
    .unwrap();
    assert_eq!(
        fates(&diff),
        [vec!["talk"], vec![], vec!["maps"], vec!["mail"]]
    );
    let next = model.next(&diff.changes, fake_bind).unwrap();
    let names: Vec<&str> = next.services().iter().map(|s| &*s.service.name).collect();
    assert_eq!(names, ["talk", "maps"], "in plan order");
    assert_eq!(
        next.service("maps").unwrap().slot,
        2,
        "never a removed one's slot"
    );
    assert_eq!(next.service("maps").unwrap().bound, addr("127.0.0.1:50000"));
}

#[test]
fn a_port_zero_listener_is_taken_by_its_own_name_or_by_the_port_it_was_given() {
    let plan = plan_of(&[("talk", "127.0.0.1:0", WEB, "")]);
    let model = started(&plan);
    // Another name on port 0 gets a listener of its own.
    let other = diff(&model, plan_of(&[("chat", "127.0.0.1:0", WEB, "")])).unwrap();
    assert_eq!(fates(&other), [vec![], vec![], vec!["chat"], vec!["talk"]]);
    // Naming the port talk was given takes talk's listener.
    let named = diff(&model, plan_of(&[("chat", "127.0.0.1:40000", WEB, "")])).unwrap();
    assert_eq!(fates(&named), [vec![], vec!["chat"], vec![], vec![]]);
}

#[test]
fn two_services_cannot_claim_one_listener() {
    let plan = plan_of(&[("talk", "127.0.0.1:0", WEB, "")]);
    let model = started(&plan);
    let Err(Refusal::Conflict(why)) = diff(
        &model,
        plan_of(&[
            ("talk", "127.0.0.1:0", WEB, ""),
            ("mail", "127.0.0.1:40000", WEB, ""),
        ]),
    ) else {
        panic!("a conflict");
    };
    assert!(
        why.contains("`talk` and `mail` both take the listener of `talk` on 127.0.0.1:40000"),
        "{why}"
    );
}

#[test]
fn the_admin_api_cannot_move_and_its_tls_waits_for_a_restart() {
    let plan = plan_of(&[("talk", "127.0.0.1:0", WEB, "")]);
    let model = started(&plan);
    let mut moved = config::parse(
        "[admin]\nlisten = '127.0.0.2:0'\n[datacenters.pangyo]\n[services.talk]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '127.0.0.1:9001'\n",
        "plan.toml",
    )
    .unwrap();
    let Err(Refusal::AdminListen { from, to }) = diff(&model, Arc::new(moved)) else {
        panic!("refused");
    };
    assert_eq!((from, to), (addr("127.0.0.1:0"), addr("127.0.0.2:0")));
    moved = config::parse(
        "[admin]\nlisten = '127.0.0.1:0'\n[datacenters.pangyo]\n[services.talk]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '127.0.0.1:9001'\n",
        "plan.toml",
    )
    .unwrap();
    assert!(diff(&model, Arc::new(moved)).unwrap().warnings.is_empty());
}

#[test]
fn a_reload_says_the_plans_own_warnings_where_they_are() {
    let plan = plan_of(&[("talk", "127.0.0.1:0", WEB, "")]);
    let model = started(&plan);
    let text = "[admin]\nlisten = '127.0.0.1:0'\n[datacenters.pangyo]\n[services.talk]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '127.0.0.1:9001'\n[scenarios.long]\nmax_duration = '1m'\n[[scenarios.long.faults]]\nservice = 'talk'\naction = 'drop'\nduration = '2m'\n";
    let warned = config::parse(text, "plan.toml").unwrap();
    let warnings = diff(&model, Arc::new(warned)).unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("plan.toml:14:12: scenario `long`"),
        "{warnings:?}"
    );
}

#[test]
fn a_service_added_at_runtime_runs_beside_the_plan_and_gets_the_plans_faults_by_name() {
    let plan = plan_of(&[("mail", "127.0.0.1:0", WEB, "")]);
    let model = started(&plan);
    // The faults of a plan that names `talk` go to the `talk` that runs.
    let with_talk = plan_of(&[
        ("mail", "127.0.0.1:0", WEB, ""),
        ("talk", "127.0.0.1:0", WEB, ""),
    ]);
    let talk = Arc::new(with_talk.topology.services[1].clone());
    let scenarios = Change::Scenarios(Arc::clone(&with_talk));
    let next = model
        .next(&[Change::Add(Arc::clone(&talk)), scenarios], fake_bind)
        .unwrap();
    assert_eq!(next.service("talk").unwrap().slot, 1);
    assert_eq!(next.slots(), Slots::new(vec![Some(0), Some(1)]));
    // Removed, its faults go nowhere; added again, it gets a new slot.
    let gone = next
        .next(&[Change::Remove(Arc::clone(&talk.name))], fake_bind)
        .unwrap();
    assert_eq!(gone.slots(), Slots::new(vec![Some(0), None]));
    let again = gone.next(&[Change::Add(talk)], fake_bind).unwrap();
    assert_eq!(again.slots(), Slots::new(vec![Some(0), Some(2)]));
}

#[test]
fn changes_that_do_not_fit_refuse_them_all_before_anything_is_bound() {
    let plan = plan_of(&[
        ("talk", "127.0.0.1:0", WEB, ""),
        ("mail", "127.0.0.1:0", WEB, ""),
    ]);
    let model = started(&plan);
    let talk = Arc::new(plan.topology.services[0].clone());
    let mut bound = 0;
    let mut counting = |service: &Service| {
        bound += 1;
        fake_bind(service)
    };
    let refused = |result: Result<Model, Refusal<String>>| match result {
        Err(Refusal::Conflict(why)) => why,
        other => panic!("refused, not {other:?}"),
    };
    let twice = refused(model.next(&[Change::Add(Arc::clone(&talk))], &mut counting));
    assert!(twice.contains("`talk`"), "{twice}");
    let unknown = refused(model.next(&[Change::Remove("maps".into())], &mut counting));
    assert_eq!(unknown, "no service `maps` runs");
    let both = [
        Change::Remove("talk".into()),
        Change::Replace {
            name: "talk".into(),
            with: talk,
            connections: Connections::Keep,
        },
    ];
    let twice = refused(model.next(&both, &mut counting));
    assert!(twice.contains("changed twice"), "{twice}");
    assert_eq!(bound, 0);
    // A taken port is the binder's to say; it refuses the change too.
    let taken = model.next(
        &[Change::Add(Arc::new(Service {
            name: "maps".into(),
            ..plan.topology.services[0].clone()
        }))],
        |_| Err("taken".to_owned()),
    );
    assert!(matches!(taken, Err(Refusal::Bind(e)) if e == "taken"));
}

#[test]
fn admin_tokens_follow_a_reload_but_not_a_change_of_scenarios_alone() {
    let with_token = |token: &str| {
        let text = format!(
            "[admin]\nlisten = '127.0.0.1:0'\ntokens = [{{ name = '{token}', value = '{token}-value' }}]\n[datacenters.pangyo]\n[services.talk]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '127.0.0.1:9001'\n"
        );
        Arc::new(config::parse(&text, "plan.toml").unwrap_or_else(|e| panic!("{e}")))
    };
    let names = |model: &Model| -> Vec<String> {
        let tokens = &model.admin().tokens;
        tokens.iter().map(|t| t.name.to_string()).collect()
    };
    let model = started(&with_token("lead"));
    let other = with_token("other");
    let scenarios = [Change::Scenarios(Arc::clone(&other))];
    let scenarios_only = model.next(&scenarios, fake_bind).unwrap();
    assert_eq!(names(&scenarios_only), ["lead"]);
    let reload = diff(&model, other).unwrap();
    let reloaded = model.next(&reload.changes, fake_bind).unwrap();
    assert_eq!(names(&reloaded), ["other"]);
    assert_eq!(reloaded.admin().listen, model.admin().listen);
}
