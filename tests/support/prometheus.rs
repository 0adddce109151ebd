//! A real Prometheus for the tests: started on a loopback port with a
//! config of its own, scraping one target every second, ready to answer
//! its API, killed by PID when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use super::{client, send, Process, TempDir, STEP};

/// A running `prometheus`, its folder (config, data, log) removed after it.
pub struct Prometheus {
    _process: Process,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second (failing until
    /// something listens there), serving https with `tls` (a certificate
    /// and key in PEM files) when given, and waits until it listens.
    pub async fn start(target: SocketAddr, tls: Option<(&Path, &Path)>) -> Prometheus {
        let dir = TempDir::new("firedrill-test-prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: firedrill\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let mut command = Command::new("prometheus");
        if let Some((cert, key)) = tls {
            let web = dir.path().join("web.yml");
            std::fs::write(
                &web,
                format!(
                    "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                    cert.display(),
                    key.display()
                ),
            )
            .unwrap();
            command.arg(format!("--web.config.file={}", web.display()));
        }
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let mut process = Process(child);
        let deadline = Instant::now() + STEP;
        let addr = loop {
            let log =
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            let found = (log.lines())
                .filter(|line| line.contains("istening"))
                .filter_map(|line| line.split("address=").nth(1)?.split(' ').next())
                .filter_map(|a| a.parse::<SocketAddr>().ok())
                .find(|a| a.port() != 0);
            if let Some(addr) = found {
                break addr;
            }
            let exited = process.0.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "prometheus did not start:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let prometheus = Prometheus {
            _process: process,
            addr,
            dir,
        };
        // It logs its address before its API answers (over plain http; a
        // test of https waits in its own way).
        let ready = format!("http://{addr}/-/ready");
        let deadline = Instant::now() + STEP;
        while tls.is_none()
            && !matches!(
                send(&client(), Method::GET, &ready, "").await,
                Ok((StatusCode::OK, _))
            )
        {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        prometheus
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}
