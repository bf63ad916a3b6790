//! Result tables of the reliability suites: one row per case with the expected and actual
//! outcome and how many requests (or connections) reached the app. A table is printed, written
//! to `target/reliability/<name>.md` (copied into docs/reliability.md) and then checked: every
//! row must match, and every deny row must show 0 requests reaching the app.

use std::fmt::Write as _;
use std::path::PathBuf;

pub struct Row {
    pub case: String,
    pub expected: String,
    pub actual: String,
    /// Requests or connections the app saw for this case.
    pub reached: usize,
    /// Requests the app may see: 0 for every deny case.
    pub allowed_reach: usize,
    /// A case that must be refused (as opposed to a control or a documented bound).
    pub deny: bool,
}

pub struct Table {
    name: &'static str,
    rows: Vec<Row>,
}

impl Table {
    pub fn new(name: &'static str) -> Self {
        Table {
            name,
            rows: Vec::new(),
        }
    }

    /// A case that must be refused: `reached` must be 0.
    pub fn deny(
        &mut self,
        case: &str,
        expected: impl ToString,
        actual: impl ToString,
        reached: usize,
    ) {
        self.push(case, expected, actual, reached, 0, true);
    }

    /// A case that is allowed (a control, or a documented bound): `reached` must be `allowed`.
    pub fn allow(
        &mut self,
        case: &str,
        expected: impl ToString,
        actual: impl ToString,
        reached: usize,
        allowed: usize,
    ) {
        self.push(case, expected, actual, reached, allowed, false);
    }

    fn push(
        &mut self,
        case: &str,
        expected: impl ToString,
        actual: impl ToString,
        reached: usize,
        allowed_reach: usize,
        deny: bool,
    ) {
        self.rows.push(Row {
            case: case.to_owned(),
            expected: expected.to_string(),
            actual: actual.to_string(),
            reached,
            allowed_reach,
            deny,
        });
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| case | kind | expected | actual | reached app | |\n|---|---|---|---|---:|---|\n",
        );
        for r in &self.rows {
            let ok = if r.expected == r.actual && r.reached == r.allowed_reach {
                "ok"
            } else {
                "**FAIL**"
            };
            let esc = |s: &str| s.replace('|', "\\|");
            let kind = if r.deny { "deny" } else { "allow" };
            let _ = writeln!(
                out,
                "| {} | {kind} | {} | {} | {} | {ok} |",
                esc(&r.case),
                esc(&r.expected),
                esc(&r.actual),
                r.reached
            );
        }
        out
    }

    /// Prints and saves the table, then fails the test on any mismatch.
    pub fn check(self) {
        let md = self.markdown();
        println!("\n{}:\n{md}", self.name);
        let dir = results_dir();
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(format!("{}.md", self.name)), &md);
        }
        let bad: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.expected != r.actual || r.reached != r.allowed_reach)
            .collect();
        assert!(
            bad.is_empty(),
            "{} of {} cases failed:\n{md}",
            bad.len(),
            self.rows.len()
        );
    }
}

/// `$PQMESH_RESULTS_DIR`, else `target/reliability` in the workspace.
pub fn results_dir() -> PathBuf {
    std::env::var_os("PQMESH_RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/reliability"))
}
