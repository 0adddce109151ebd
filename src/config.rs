//! The fault plan: [`load`] reads a TOML file, parses it into the raw model
//! of `raw.rs`, and `validate.rs` turns that into a checked [`Plan`]. Every
//! problem becomes a [`Diagnostic`] with file, line and column, and all of
//! them are reported at once.

mod admin;
mod guard;
mod raw;
mod validate;

pub use admin::{Admin, AdminTls, Secret, Token};
pub use guard::{Guard, Measure, OnError, Safety, Scope};

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fault::Scenario;
use crate::topology::Topology;

/// Where the admin API listens when the plan does not say.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// A validated plan; nothing downstream checks it again.
#[derive(Debug)]
pub struct Plan {
    pub admin: Admin,
    pub topology: Topology,
    pub scenarios: Vec<Arc<Scenario>>,
    pub reports: Reports,
    /// `[safety]`: limits on what may be activated.
    pub safety: Safety,
    /// What runs, but maybe not as meant (a fault cut short by its
    /// scenario's max_duration, say), located like errors.
    pub warnings: Vec<Diagnostic>,
}

impl Plan {
    /// Looks a scenario up by name.
    pub fn scenario(&self, name: &str) -> Option<&Arc<Scenario>> {
        self.scenarios.iter().find(|s| &*s.name == name)
    }
}

/// `[reports]`: impact reports of ended activations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reports {
    /// Where each report is also written, as JSON and Markdown; `None`
    /// keeps them in memory only.
    pub dir: Option<PathBuf>,
    /// How long before an activation a report measures (at most the
    /// stats history, 5 minutes).
    pub before: Duration,
    /// How long after an activation ends a report measures, and waits for
    /// each service's first successful request.
    pub after: Duration,
}

impl Reports {
    /// The furthest back `before` may reach: the stats history
    /// (`stats::HISTORY`, a layer above; a test there checks they agree).
    pub const MOST_BEFORE: Duration = Duration::from_secs(300);
}

impl Default for Reports {
    fn default() -> Reports {
        Reports {
            dir: None,
            before: Duration::from_secs(60),
            after: Duration::from_secs(60),
        }
    }
}

/// Why a plan could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read plan {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", DiagnosticList(.0))]
    Invalid(Vec<Diagnostic>),
}

/// One problem in a plan, located in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
    /// An error stops the plan from loading; a warning does not.
    pub severity: Severity,
    /// The source line the problem is on, for display.
    source_line: String,
    /// How many characters to underline from `column`.
    width: usize,
}

/// Whether a [`Diagnostic`] stops the plan from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Diagnostic {
    fn new(file: &str, source: &str, span: Range<usize>, message: String) -> Diagnostic {
        let start = span.start.min(source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let end = span.end.clamp(start, line_end);
        Diagnostic {
            file: file.to_owned(),
            line: source[..start].matches('\n').count() + 1,
            column: source[line_start..start].chars().count() + 1,
            message,
            severity: Severity::Error,
            source_line: source[line_start..line_end].trim_end().to_owned(),
            width: source[start..end].chars().count().max(1),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        writeln!(
            f,
            "{}:{}:{}: {severity}{}",
            self.file, self.line, self.column, self.message
        )?;
        let gutter = self.line.to_string().len();
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        write!(
            f,
            "{:gutter$} | {}{}",
            "",
            " ".repeat(self.column - 1),
            "^".repeat(self.width)
        )
    }
}

struct DiagnosticList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        let count = self.0.len();
        write!(
            f,
            "\n\n{count} error{} in plan",
            if count == 1 { "" } else { "s" }
        )
    }
}

/// Reads and validates the plan at `path`.
pub fn load(path: &Path) -> Result<Plan, Error> {
    let source = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&source, &path.display().to_string())
}

/// Parses and validates plan text; `file` names it in diagnostics.
pub fn parse(source: &str, file: &str) -> Result<Plan, Error> {
    let mut problems = Vec::new();
    let mut report = |span, message| problems.push((span, message));
    // Relative paths in the plan (certificates, token files) are read from
    // the plan file's directory, wherever firedrill was started.
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut warnings = Vec::new();
    let plan = raw::parse(source, &mut report).map(|raw| {
        validate::warnings(&raw, &mut |span, message| warnings.push((span, message)));
        validate::validate(raw, base, &mut report)
    });
    match plan {
        Some(mut plan) if problems.is_empty() => {
            warnings.sort_by_key(|(span, _): &(Range<usize>, String)| span.start);
            plan.warnings = warnings
                .into_iter()
                .map(|(span, message)| Diagnostic {
                    severity: Severity::Warning,
                    ..Diagnostic::new(file, source, span, message)
                })
                .collect();
            Ok(plan)
        }
        _ => {
            problems.sort_by_key(|(span, _): &(Range<usize>, String)| span.start);
            Err(Error::Invalid(
                problems
                    .into_iter()
                    .map(|(span, message)| Diagnostic::new(file, source, span, message))
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
mod tests;
