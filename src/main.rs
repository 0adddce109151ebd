//! The firedrill command line: `run` a plan, `check` plans, or run the
//! `demo` with stand-in upstreams (exit 64 for a bad plan, 1 otherwise);
//! or call a running firedrill with `trigger`, `lift`, `status`, `watch`,
//! `events` and `report` (see `firedrill::cli` for their exit codes).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use firedrill::config::{self, Plan};
use firedrill::shutdown::Received;

/// The shipped default plan, also built in so `demo` runs from anywhere.
const DEFAULT_PLAN: &str = "config/kakao-staging.toml";
const SHIPPED_PLAN: &str = include_str!("../config/kakao-staging.toml");

/// Exit code for a plan that does not load (EX_DATAERR's neighbour, EX_USAGE).
const EXIT_BAD_PLAN: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A data-center-aware fault-injection proxy for rehearsing blackouts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every listener of a plan and the admin API.
    Run {
        /// The fault plan to run.
        #[arg(long, short, default_value = DEFAULT_PLAN)]
        config: PathBuf,
        /// How long in-flight requests may take to finish on shutdown.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Worker threads for client connections; default: one per core.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate plans; report every error with file, line and column.
    Check {
        /// Plan files to check.
        #[arg(required = true)]
        plans: Vec<PathBuf>,
        /// Also connect to every upstream (tcp connect; http `HEAD /`, after
        /// the TLS handshake for https) and print a table; exit 1 if any
        /// is unreachable.
        #[arg(long)]
        probe: bool,
    },
    /// Run a plan (the shipped one by default) with built-in stand-in upstreams.
    Demo {
        /// A plan to use instead of the shipped one.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Add this to every port of the plan (listeners, stand-in
        /// upstreams, admin API), to run beside what holds them.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
    },
    #[command(flatten)]
    Client(firedrill::cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: piped into a file or journald
        // they make `listen=...` unreadable and ungreppable.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Client(command) => firedrill::cli::run(command),
        Command::Check { plans, probe } => check(&plans, probe),
        Command::Run {
            config,
            grace,
            threads,
        } => match load(&config) {
            Ok(plan) => serve(plan, Some(config), grace, threads, false),
            Err(code) => code,
        },
        Command::Demo {
            config,
            port_offset,
        } => {
            let plan = match &config {
                Some(path) => load(path),
                None => config::parse(SHIPPED_PLAN, DEFAULT_PLAN).map_err(|e| {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_BAD_PLAN)
                }),
            };
            let plan = plan.and_then(|mut plan| {
                firedrill::demo::shift_ports(&mut plan, port_offset)
                    .map(|()| plan)
                    .map_err(|e| {
                        eprintln!("{e}");
                        ExitCode::from(EXIT_BAD_PLAN)
                    })
            });
            // A re-read plan file would bring back the unshifted ports.
            let source = config.filter(|_| port_offset == 0);
            match plan {
                Ok(plan) => serve(plan, source, Duration::from_secs(2), None, true),
                Err(code) => code,
            }
        }
    }
}

fn load(path: &Path) -> Result<Plan, ExitCode> {
    let plan = config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_BAD_PLAN)
    })?;
    print_warnings(&plan);
    Ok(plan)
}

/// Prints a plan's warnings, located like errors; they do not stop it.
fn print_warnings(plan: &Plan) {
    for warning in &plan.warnings {
        eprintln!("{warning}\n");
    }
}

fn check(paths: &[PathBuf], probe: bool) -> ExitCode {
    let mut ok = true;
    for path in paths {
        match config::load(path) {
            Ok(plan) => {
                print_warnings(&plan);
                let warnings = match plan.warnings.len() {
                    0 => String::new(),
                    1 => ", 1 warning".to_owned(),
                    n => format!(", {n} warnings"),
                };
                println!(
                    "{}: ok ({} datacenters, {} services, {} scenarios){warnings}",
                    path.display(),
                    plan.topology.datacenters.len(),
                    plan.topology.services.len(),
                    plan.scenarios.len()
                )
            }
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    // Probe only valid plans, after every plan's verdict is printed.
    let mut reachable = true;
    if ok && probe {
        for path in paths {
            if let Ok(plan) = config::load(path) {
                println!("\n{}: probing every upstream", path.display());
                reachable &= probe_upstreams(&plan);
            }
        }
    }
    if !ok {
        ExitCode::from(EXIT_BAD_PLAN)
    } else if !reachable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Probes every upstream of `plan` and prints the table; whether all answered.
fn probe_upstreams(plan: &Plan) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let probes = match runtime {
        Ok(runtime) => runtime.block_on(firedrill::probe::probe_all(&plan.topology)),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return false;
        }
    };
    print!("{}", firedrill::probe::Table(&probes));
    probes.iter().all(|p| p.result.is_ok())
}

/// Runs `plan` until a stop signal; SIGHUP re-reads `source` when given.
fn serve(
    plan: Plan,
    source: Option<PathBuf>,
    grace: Duration,
    threads: Option<usize>,
    demo: bool,
) -> ExitCode {
    // One worker per core by default, each a single-threaded runtime:
    // see `firedrill::workers`. `--threads` overrides it.
    let threads = threads.filter(|&t| t > 0).unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // Accept loops, the admin API and the engine: light work, one thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (runtime, workers) = match (runtime, firedrill::Workers::spawn(threads)) {
        (Ok(runtime), Ok(workers)) => (runtime, workers),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Listen for signals before anything says it is listening: a SIGTERM
        // sent right after the "listening" lines must drain, not kill.
        let mut signals = match firedrill::shutdown::Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("cannot listen for signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stop_upstreams = CancellationToken::new();
        if demo {
            if let Err(e) = firedrill::demo::start_upstreams(&plan, stop_upstreams.clone()).await {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        let demo_hints = demo.then(|| demo_hints(&plan));
        let names: Vec<_> = plan
            .topology
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let started = firedrill::start_with(plan, source, workers).await;
        let running = match started {
            Ok(running) => running,
            Err(e) => {
                match &e {
                    firedrill::StartError::Bind { addr, source, .. }
                        if demo && source.kind() == std::io::ErrorKind::AddrInUse =>
                    {
                        eprintln!("{e}; {}", firedrill::demo::port_taken(addr.port()));
                    }
                    _ => eprintln!("{e}"),
                }
                return ExitCode::FAILURE;
            }
        };
        tracing::info!("faults are never persisted: firedrill starts in pass-through");
        println!("{}", ready_line(&running, &names));
        if let Some(hints) = demo_hints {
            println!(
                "{}",
                hints.replace("ADMIN", &running.admin_addr().to_string())
            );
        }
        while signals.recv().await == Received::Reload {
            // An invalid plan changes nothing; the error says what to fix.
            if let Err(e) = running.control().reload("SIGHUP").await {
                tracing::error!("reload failed: {e}");
            }
        }
        let drain = running.shutdown(grace);
        tokio::pin!(drain);
        let cut = loop {
            tokio::select! {
                cut = &mut drain => break cut,
                received = signals.recv() => if received == Received::Stop {
                    tracing::warn!("second signal: stopping now without draining");
                    return ExitCode::FAILURE;
                },
            }
        };
        stop_upstreams.cancel();
        if cut > 0 {
            tracing::warn!(cut, "some connections were cut at the drain deadline");
        }
        ExitCode::SUCCESS
    })
}

/// The line printed on stdout once everything listens, for scripts and
/// tests to wait on: `firedrill ready admin=ADDR service.NAME=ADDR ...`,
/// with the bound addresses (the real ports where the plan said 0).
fn ready_line(running: &firedrill::Running, services: &[std::sync::Arc<str>]) -> String {
    let mut line = format!("firedrill ready admin={}", running.admin_addr());
    for name in services {
        if let Some(addr) = running.service_addr(name) {
            line += &format!(" service.{name}={addr}");
        }
    }
    line
}

/// The curl commands a newcomer can try against the demo.
fn demo_hints(plan: &Plan) -> String {
    let services = &plan.topology.services;
    let http = |dc: &str| {
        services
            .iter()
            .find(|s| &*s.datacenter == dc && s.protocol == firedrill::topology::Protocol::Http)
    };
    let mut hints = String::from("\nfiredrill demo is running. Try, in another terminal:\n\n");
    let inside = http("pangyo").or_else(|| services.first());
    let outside = services
        .iter()
        .find(|s| &*s.datacenter != "pangyo" && s.protocol == firedrill::topology::Protocol::Http);
    for service in inside.into_iter().chain(outside) {
        hints += &format!(
            "  curl -s http://{}/hello        # {} in {}\n",
            service.listen, service.name, service.datacenter
        );
    }
    hints += "  curl -s ADMIN/scenarios | head -c 600\n";
    hints += "  curl -s -X POST ADMIN/faults/pangyo-fire     # Pangyo goes dark\n";
    if let Some(service) = inside {
        hints += &format!(
            "  curl -s -m 2 http://{}/hello || echo 'no answer: pangyo is dark'\n",
            service.listen
        );
    }
    hints += "  curl -s ADMIN/faults\n";
    hints +=
        "  curl -s -X DELETE ADMIN/faults                # the big red button: lift everything\n";
    hints += "  curl -s ADMIN/metrics | grep firedrill_\n\nCtrl-C stops the demo.";
    hints.replace("ADMIN", "http://ADMIN")
}
