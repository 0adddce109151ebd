//! Structural checks of every Grafana dashboard under `dashboards/`, offline:
//! valid JSON, unique panel ids, a grid position for every panel, a refId
//! and datasource for every query, and PromQL that uses only the dashboard's
//! own template variables and the metric names `src/metrics.rs` declares.
//! tests/prometheus.rs runs the same queries against a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Variables Grafana defines for every dashboard that these may use.
const GRAFANA_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

/// Constants in src/metrics.rs naming metrics without `datacenter` and
/// `service` labels, so a query on them cannot filter by those variables.
const UNSCOPED_METRICS: &[&str] = &["SCENARIO_ACTIVE"];

/// The label filters each query on a scoped metric needs, by the template
/// variable that feeds them.
const SCOPE_FILTERS: &[(&str, &str)] = &[
    ("datacenter", r#"datacenter=~"$datacenter""#),
    ("service", r#"service=~"$service""#),
];

struct Dashboard {
    path: PathBuf,
    json: Value,
}

/// Where a PromQL query sits in a dashboard, for error messages.
struct Query<'a> {
    place: String,
    expr: &'a str,
    /// Panel targets must filter by the scope variables; annotations and
    /// variable queries (which feed those variables) need not.
    scoped: bool,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("reading a directory entry").path();
        if path.is_dir() {
            json_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "json") {
            found.push(path);
        }
    }
}

fn dashboards() -> Vec<Dashboard> {
    let mut paths = Vec::new();
    json_files(&root().join("dashboards"), &mut paths);
    paths.sort();
    assert!(!paths.is_empty(), "no *.json under dashboards/");
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not valid JSON: {e}", path.display()));
            Dashboard { path, json }
        })
        .collect()
}

/// Fails with every problem found, one a line.
fn assert_no_problems(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

impl Dashboard {
    fn name(&self) -> String {
        let relative = self.path.strip_prefix(root()).unwrap_or(&self.path);
        relative.display().to_string()
    }

    /// Every panel, rows and the panels folded inside collapsed rows too.
    fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for panel in panels.as_array().into_iter().flatten() {
                out.push(panel);
                walk(&panel["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    fn panel_place(&self, panel: &Value) -> String {
        let title = str_of(&panel["title"]);
        format!("{} panel {} {title:?}", self.name(), panel["id"])
    }

    fn target_place(&self, panel: &Value, target: &Value) -> String {
        let ref_id = str_of(&target["refId"]);
        format!("{} target {ref_id}", self.panel_place(panel))
    }

    fn entry_place(&self, kind: &str, entry: &Value) -> String {
        format!("{} {kind} {:?}", self.name(), str_of(&entry["name"]))
    }

    fn annotations(&self) -> impl Iterator<Item = &Value> {
        self.json["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
    }

    fn variables(&self) -> impl Iterator<Item = &Value> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
    }

    fn query_variables(&self) -> impl Iterator<Item = &Value> {
        self.variables().filter(|v| v["type"] == "query")
    }

    fn variable_names(&self) -> BTreeSet<&str> {
        self.variables()
            .filter_map(|v| v["name"].as_str())
            .collect()
    }

    /// Every PromQL expression: panel targets, annotations, and the
    /// selectors inside query variables.
    fn queries(&self) -> Vec<Query<'_>> {
        let mut queries = Vec::new();
        for panel in self.panels() {
            for target in targets(panel) {
                if let Some(expr) = target["expr"].as_str() {
                    let place = self.target_place(panel, target);
                    queries.push(Query {
                        place,
                        expr,
                        scoped: true,
                    });
                }
            }
        }
        for annotation in self.annotations() {
            if let Some(expr) = annotation["expr"].as_str() {
                let place = self.entry_place("annotation", annotation);
                queries.push(Query {
                    place,
                    expr,
                    scoped: false,
                });
            }
        }
        for variable in self.query_variables() {
            let query = &variable["query"];
            let text = query["query"].as_str().or(query.as_str()).unwrap_or("");
            if let Some(expr) = variable_promql(text) {
                let place = self.entry_place("variable", variable);
                queries.push(Query {
                    place,
                    expr,
                    scoped: false,
                });
            }
        }
        queries
    }

    /// Every datasource reference, with where it sits. Rows and text panels
    /// query nothing and need none.
    fn datasources(&self) -> Vec<(String, &Value)> {
        let mut found = Vec::new();
        for panel in self.panels().into_iter().filter(|p| !targets(p).is_empty()) {
            found.push((self.panel_place(panel), &panel["datasource"]));
            for target in targets(panel) {
                found.push((self.target_place(panel, target), &target["datasource"]));
            }
        }
        for annotation in self.annotations() {
            found.push((
                self.entry_place("annotation", annotation),
                &annotation["datasource"],
            ));
        }
        for variable in self.query_variables() {
            found.push((
                self.entry_place("variable", variable),
                &variable["datasource"],
            ));
        }
        found
    }
}

fn targets(panel: &Value) -> &[Value] {
    panel["targets"].as_array().map_or(&[], Vec::as_slice)
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// The PromQL inside a Prometheus variable query: the selector of
/// `label_values(SELECTOR, label)` or the query of `query_result(QUERY)`.
fn variable_promql(query: &str) -> Option<&str> {
    let query = query.trim();
    if let Some(inner) = query.strip_prefix("label_values(") {
        let inner = inner.strip_suffix(')')?;
        // A bare `label_values(label)` has no selector.
        return inner.rsplit_once(',').map(|(selector, _)| selector.trim());
    }
    query.strip_prefix("query_result(")?.strip_suffix(')')
}

/// The metric names declared in src/metrics.rs as
/// `pub const NAME: &str = "firedrill_...";`, by constant name, and which of
/// them are histograms.
fn declared_metrics() -> (BTreeMap<String, String>, BTreeSet<String>) {
    let path = root().join("src/metrics.rs");
    let source = std::fs::read_to_string(&path).expect("reading src/metrics.rs");
    let mut constants = BTreeMap::new();
    for line in source.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((constant, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        if let Some(name) = value.strip_suffix("\";") {
            if name.starts_with("firedrill_") {
                constants.insert(constant.to_owned(), name.to_owned());
            }
        }
    }
    assert!(
        !constants.is_empty(),
        "no `pub const ...: &str = \"firedrill_...\"` in src/metrics.rs"
    );
    // `histogram!(NAME` and `describe_histogram!(NAME` name the histograms.
    let histograms = source
        .split("histogram!(")
        .skip(1)
        .filter_map(|after| {
            let constant: String = after
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            constants.get(&constant).cloned()
        })
        .collect();
    (constants, histograms)
}

/// A metric selector found in PromQL: its name and its `{...}` matchers.
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    matchers: String,
}

/// PromQL words that are not metric names when not followed by `(`.
const PROMQL_KEYWORDS: &str = "and or unless by without on ignoring group_left group_right bool \
    offset inf nan sum min max avg group stddev stdvar count count_values bottomk topk quantile";

/// Keywords whose parentheses hold label names, not expressions.
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";

/// The metric selectors of a PromQL expression: every identifier that is not
/// a function, keyword, label, string, duration, number or variable.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' || c == '[' {
            i = skip_group(&chars, i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            // A template variable: `$name` or `${name}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i);
            } else {
                while i < chars.len() && is_identifier_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations: 0.99, 1e3, 0x1f, 5m, 1h30m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_identifier_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            let called = chars.get(after) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if called && LABEL_LISTS.split_whitespace().any(|w| w == lower) {
                i = skip_group(&chars, after);
            } else if !called && !PROMQL_KEYWORDS.split_whitespace().any(|w| w == lower) {
                let mut matchers = String::new();
                if chars.get(after) == Some(&'{') {
                    let end = skip_group(&chars, after);
                    matchers = chars[after..end].iter().collect();
                    i = end;
                }
                found.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    found
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal opening at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        // Backquoted strings have no escapes.
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index just past the bracket that closes the one at `start`, skipping
/// strings inside.
fn skip_group(chars: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// The template variables a string refers to: `$name`, `${name}`,
/// `${name:format}` and the deprecated `[[name]]`.
fn variable_references(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}').unwrap_or(braced.len());
            braced[..end].split(':').next().unwrap_or("")
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            &rest[..end.unwrap_or(rest.len())]
        };
        // `$1` in a label_replace() replacement is PromQL's, not Grafana's.
        if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            found.push(name);
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("[[") {
        rest = &rest[at + 2..];
        let end = rest.find("]]").unwrap_or(rest.len());
        found.push(rest[..end].split(':').next().unwrap_or(""));
    }
    found
}

#[test]
fn every_dashboard_file_is_valid_json_with_panels() {
    for dashboard in dashboards() {
        let name = dashboard.name();
        assert!(dashboard.json.is_object(), "{name}: not a JSON object");
        assert!(!dashboard.panels().is_empty(), "{name}: no panels");
        assert!(
            dashboard.json["schemaVersion"]
                .as_u64()
                .is_some_and(|v| v >= 39),
            "{name}: schemaVersion must be 39 or later, found {}",
            dashboard.json["schemaVersion"]
        );
    }
}

#[test]
fn panel_ids_are_unique_within_each_dashboard_including_rows() {
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        let mut seen = BTreeMap::new();
        for panel in dashboard.panels() {
            let place = dashboard.panel_place(panel);
            match panel["id"].as_u64() {
                None => problems.push(format!("{place}: no numeric id")),
                Some(id) => {
                    if let Some(first) = seen.insert(id, place.clone()) {
                        problems.push(format!("{place}: id {id} already used by {first}"));
                    }
                }
            }
        }
    }
    assert_no_problems("panel ids", problems);
}

#[test]
fn every_panel_has_a_grid_position_inside_the_24_columns() {
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        for panel in dashboard.panels() {
            let grid = &panel["gridPos"];
            let place = dashboard.panel_place(panel);
            let field = |key: &str| grid[key].as_u64();
            match (field("x"), field("y"), field("w"), field("h")) {
                (Some(x), Some(_), Some(w), Some(h)) => {
                    if w == 0 || h == 0 || x + w > 24 {
                        problems.push(format!("{place}: gridPos {grid} is outside the grid"));
                    }
                }
                _ => problems.push(format!(
                    "{place}: gridPos needs integer x, y, w and h, found {grid}"
                )),
            }
        }
    }
    assert_no_problems("grid positions", problems);
}

#[test]
fn every_query_has_a_unique_ref_id_and_a_datasource() {
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        for panel in dashboard.panels() {
            let place = dashboard.panel_place(panel);
            let mut ref_ids = BTreeSet::new();
            for target in targets(panel) {
                match target["refId"].as_str() {
                    Some(id) if !id.is_empty() => {
                        if !ref_ids.insert(id) {
                            problems.push(format!("{place}: refId {id} used twice"));
                        }
                    }
                    _ => problems.push(format!("{place}: a target has no refId: {target}")),
                }
            }
        }
        for (place, datasource) in dashboard.datasources() {
            if !datasource["type"].is_string() || str_of(&datasource["uid"]).is_empty() {
                problems.push(format!(
                    "{place}: datasource needs a type and a uid, found {datasource}"
                ));
            }
        }
    }
    assert_no_problems("queries and datasources", problems);
}

#[test]
fn queries_and_datasources_use_only_variables_the_dashboard_defines() {
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        let defined = dashboard.variable_names();
        let mut texts: Vec<(String, &str)> = dashboard
            .queries()
            .into_iter()
            .map(|query| (query.place, query.expr))
            .collect();
        for (place, datasource) in dashboard.datasources() {
            texts.push((place, str_of(&datasource["uid"])));
        }
        for (place, text) in texts {
            for name in variable_references(text) {
                if !defined.contains(name) && !GRAFANA_VARIABLES.contains(&name) {
                    problems.push(format!(
                        "{place}: ${name} is not defined; the dashboard defines {defined:?}, Grafana {GRAFANA_VARIABLES:?}"
                    ));
                }
            }
        }
    }
    assert_no_problems("template variables", problems);
}

#[test]
fn queries_use_only_metrics_that_firedrill_declares() {
    let (constants, histograms) = declared_metrics();
    let mut known: BTreeSet<String> = constants.values().cloned().collect();
    for histogram in &histograms {
        for suffix in ["_bucket", "_sum", "_count"] {
            known.insert(format!("{histogram}{suffix}"));
        }
    }
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        for query in dashboard.queries() {
            let found = selectors(query.expr);
            if found.is_empty() {
                problems.push(format!("{}: no metric in {:?}", query.place, query.expr));
            }
            for selector in found {
                if !known.contains(&selector.metric) {
                    problems.push(format!(
                        "{}: {} is not declared in src/metrics.rs (known: {known:?})",
                        query.place, selector.metric
                    ));
                }
            }
        }
    }
    assert_no_problems("metric names", problems);
}

#[test]
fn panel_queries_filter_by_the_data_center_and_service_variables() {
    let (constants, _) = declared_metrics();
    let unscoped: BTreeSet<&str> = UNSCOPED_METRICS
        .iter()
        .map(|constant| {
            constants
                .get(*constant)
                .unwrap_or_else(|| panic!("src/metrics.rs no longer declares {constant}"))
                .as_str()
        })
        .collect();
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        let defined = dashboard.variable_names();
        for query in dashboard.queries().into_iter().filter(|q| q.scoped) {
            for selector in selectors(query.expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| selector.metric.strip_suffix(suffix))
                    .filter(|base| constants.values().any(|name| name == base))
                    .unwrap_or(&selector.metric);
                if unscoped.contains(base) {
                    continue;
                }
                for (variable, filter) in SCOPE_FILTERS {
                    if defined.contains(variable) && !selector.matchers.contains(filter) {
                        problems.push(format!(
                            "{}: {}{} lacks {filter}",
                            query.place, selector.metric, selector.matchers
                        ));
                    }
                }
            }
        }
    }
    assert_no_problems("scope filters", problems);
}

#[test]
fn range_selectors_use_grafana_interval_variables() {
    let mut problems = Vec::new();
    for dashboard in dashboards() {
        for query in dashboard.queries() {
            let mut rest = query.expr;
            while let Some(open) = rest.find('[') {
                let close = rest[open..].find(']').map_or(rest.len(), |end| open + end);
                let range = &rest[open + 1..close];
                let uses_variable = GRAFANA_VARIABLES
                    .iter()
                    .any(|variable| range.starts_with(&format!("${variable}")));
                if !uses_variable {
                    problems.push(format!(
                        "{}: range [{range}] should be [$__rate_interval] (or $__interval, $__range)",
                        query.place
                    ));
                }
                rest = &rest[close.min(rest.len())..];
            }
        }
    }
    assert_no_problems("range selectors", problems);
}

#[test]
fn error_ratio_panels_count_5xx_answers_as_failed_beside_the_failed_outcomes() {
    // A service that answers 503 because a dependency went dark fails as
    // surely as one that was blackholed.
    let failed = [
        r#"outcome=~"dropped|blackholed|error|upstream_error""#,
        r#"code="5xx""#,
    ];
    let mut problems = Vec::new();
    let mut found = 0;
    for dashboard in dashboards() {
        for panel in dashboard.panels() {
            if !str_of(&panel["title"])
                .to_lowercase()
                .contains("error ratio")
            {
                continue;
            }
            for target in targets(panel) {
                found += 1;
                let expr = str_of(&target["expr"]);
                for selector in failed.iter().filter(|s| !expr.contains(*s)) {
                    let place = dashboard.target_place(panel, target);
                    problems.push(format!("{place}: does not count {selector} as failed"));
                }
            }
        }
    }
    assert!(found > 0, "no panel titled \"... error ratio ...\"");
    assert_no_problems("error ratios", problems);
}

#[test]
fn metric_scanner_skips_labels_functions_strings_durations_and_variables() {
    let expr = r#"(sum by (le, datacenter) (rate(firedrill_x_bucket{outcome=~"a|b", datacenter=~"$datacenter"}[$__rate_interval])) or max without (service) (up) * 0) / on (job) group_left (instance) histogram_quantile(0.99, foo:bar offset 5m) > bool 1e3"#;
    let found: Vec<(String, String)> = selectors(expr)
        .into_iter()
        .map(|s| (s.metric, s.matchers))
        .collect();
    let expected = [
        (
            "firedrill_x_bucket",
            r#"{outcome=~"a|b", datacenter=~"$datacenter"}"#,
        ),
        ("up", ""),
        ("foo:bar", ""),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(m, s)| (m.to_string(), s.to_string()))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn variable_references_cover_every_grafana_syntax() {
    let text = r#"label_replace(rate(x{a=~"$one", b="${two}", c="${three:regex}", d="[[four]]"}[$__rate_interval]), "e", "$1", "f", "(.*)")"#;
    assert_eq!(
        variable_references(text),
        ["one", "two", "three", "__rate_interval", "four"]
    );
    assert_eq!(
        variable_promql(r#"label_values(m{dc=~"$dc"}, service)"#),
        Some(r#"m{dc=~"$dc"}"#)
    );
    assert_eq!(variable_promql("label_values(service)"), None);
}
