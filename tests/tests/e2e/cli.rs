//! The two daemons' command lines as a user meets them, run as real processes (the binaries
//! `cargo build --bins` makes): help and version, one-line errors without backtraces, unknown
//! variables, listen errors naming the setting, a missing `--local` directory, `validate` on
//! good and bad files, no colour codes in logs that are not a terminal; and docs/configuration.md
//! generated from the same tables as `--help` (it cannot drift: this test fails when it does).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pqmesh_mtls::env::{markdown_table, Setting};

pub(crate) fn binary(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (./test.sh does)",
        path.display()
    );
    path
}

/// Runs a daemon with a clean environment (plus `env`) so the host's PQMESH_* cannot interfere.
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary(name))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Program, arguments, and the settings tables its help must list.
type HelpCase<'a> = (&'a str, &'a [&'a str], &'a [&'a [Setting]]);

/// Program, arguments, environment, exit code, expected text.
type ErrorCase<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    i32,
    &'a str,
);

#[test]
fn help_and_version_exit_zero_and_list_every_setting() {
    let cases: &[HelpCase] = &[
        (
            "pqmesh-control-plane",
            &["--help"],
            pqmesh_control_plane::config::TABLES,
        ),
        (
            "pqmesh-control-plane",
            &["help"],
            pqmesh_control_plane::config::TABLES,
        ),
        (
            "pqmesh-sidecar",
            &["--help"],
            pqmesh_sidecar::config::TABLES,
        ),
        ("pqmesh-sidecar", &["help"], pqmesh_sidecar::config::TABLES),
    ];
    for (bin, args, tables) in cases {
        let o = run(bin, args, &[]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{bin} {args:?}: {err}");
        for s in tables.iter().flat_map(|t| t.iter()) {
            assert!(
                out.contains(&format!("[env: {}]", s.env))
                    && out.contains(&format!("--{}", s.flag)),
                "{bin} {args:?} does not list {} / --{}",
                s.env,
                s.flag
            );
        }
        assert!(
            out.contains("[default: 127.0.0.1:150"),
            "{bin}: defaults shown"
        );
    }
    for (bin, args, want) in [
        (
            "pqmesh-control-plane",
            &["-h"][..],
            "Usage: pqmesh-control-plane",
        ),
        ("pqmesh-control-plane", &["-V"], "pqmesh-control-plane 0."),
        (
            "pqmesh-control-plane",
            &["--version"],
            "pqmesh-control-plane 0.",
        ),
        (
            "pqmesh-control-plane",
            &["crds", "--help"],
            "Usage: pqmesh-control-plane crds",
        ),
        (
            "pqmesh-control-plane",
            &["help", "validate"],
            "file:line: reason",
        ),
        (
            "pqmesh-control-plane",
            &["rotate-root", "--help"],
            "[env: PQMESH_TRUST_DOMAIN]",
        ),
        ("pqmesh-sidecar", &["-V"], "pqmesh-sidecar 0."),
        ("pqmesh-sidecar", &["init", "--help"], "--proxy-uid <UID>"),
        ("pqmesh-sidecar", &["init", "-h"], "[default: 15001]"),
    ] {
        let o = run(bin, args, &[]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{bin} {args:?}: {err}");
        assert!(out.contains(want), "{bin} {args:?}: {want:?} not in\n{out}");
    }
}

#[test]
fn user_errors_are_one_line_without_a_backtrace() {
    let missing = std::env::temp_dir().join(format!("pqmesh-no-such-dir-{}", std::process::id()));
    let missing = missing.to_str().expect("utf-8 temp dir");
    let cases: &[ErrorCase] = &[
        (
            "pqmesh-control-plane",
            &["--local", missing],
            &[],
            2,
            "no such directory",
        ),
        (
            "pqmesh-control-plane",
            &[],
            &[("PQMESH_LOCAL_DIR", missing)],
            2,
            "add --init",
        ),
        (
            "pqmesh-control-plane",
            &["--local", "/tmp"],
            &[("PQMESH_LEAF_LIFETIME", "2d")],
            2,
            "PQMESH_LEAF_LIFETIME=\"2d\": unknown unit",
        ),
        (
            "pqmesh-control-plane",
            &["--local", "/tmp", "--log-format", "yaml"],
            &[],
            2,
            "PQMESH_LOG_FORMAT=\"yaml\": expected text or json",
        ),
        ("pqmesh-control-plane", &[], &[], 2, "pass --local DIR"),
        ("pqmesh-sidecar", &[], &[], 2, "PQMESH_BOOTSTRAP_TOKEN_FILE"),
        (
            "pqmesh-sidecar",
            &[],
            &[
                ("PQMESH_WORKER_THREADS", "0"),
                ("PQMESH_BOOTSTRAP_TOKEN", "t"),
                ("PQMESH_CONTROL_PLANE_ADDR", "x:1"),
                ("PQMESH_TRUST_BUNDLE", "/b"),
            ],
            2,
            "PQMESH_WORKER_THREADS=\"0\": expected a whole number from 1 to 256",
        ),
    ];
    for (bin, args, env, code, want) in cases {
        let mut env = env.to_vec();
        env.push(("RUST_BACKTRACE", "1"));
        let o = run(bin, args, &env);
        let (_, err) = text(&o);
        assert_eq!(
            o.status.code(),
            Some(*code),
            "{bin} {args:?} {env:?}: {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line, no backtrace: {err}"
        );
        assert!(err.contains(want), "{bin} {args:?}: {want:?} not in {err}");
    }
    assert!(!Path::new(missing).exists(), "nothing was created");
    // clap's own usage errors: exit 2, naming the argument.
    let o = run("pqmesh-sidecar", &["--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("'--bogus'"));
}

/// Starts the control plane in a fresh directory (with --init), with the given extra
/// environment, until it is ready or exits; returns what it logged and whether it exited.
fn start_control_plane(extra: &[(&str, &str)], args: &[&str]) -> (String, Option<i32>) {
    let dir = tempfile_dir();
    let admin = free_port();
    let grpc = free_port();
    let local = free_port();
    let mut env = vec![
        ("PQMESH_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
        ("PQMESH_ADMIN_ADDR", format!("127.0.0.1:{admin}")),
        ("PQMESH_ADMIN_LOCAL_ADDR", format!("127.0.0.1:{local}")),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let log = dir.join("cp.log");
    let mut child = Command::new(binary("pqmesh-control-plane"))
        .args([
            "--local",
            dir.join("mesh").to_str().expect("utf-8"),
            "--init",
        ])
        .args(args)
        .env_clear()
        .envs(env)
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if dir.join("mesh/trust-bundle.pem").exists() || Instant::now() > deadline {
            // Listeners open after the trust bundle is written: give a bind error time to show.
            std::thread::sleep(Duration::from_millis(500));
            if let Some(status) = child.try_wait().expect("wait") {
                break status.code();
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (text, exited)
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pqmesh-cli-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn unknown_variables_are_named_and_logs_have_no_colour_off_a_terminal() {
    let (log, exited) = start_control_plane(&[("PQMESH_LEAF_LIFETIM", "2h")], &[]);
    assert_eq!(exited, None, "it started: {log}");
    assert!(
        log.contains("PQMESH_LEAF_LIFETIM is not a setting of this program and is ignored (did you mean PQMESH_LEAF_LIFETIME?)"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file: {log:?}"
    );
    let (log, _) = start_control_plane(&[], &["--log-format", "json"]);
    let first = log.lines().next().unwrap_or_default();
    let line: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(
        line.get("level").is_some() && line.get("message").is_some(),
        "{line}"
    );
}

#[test]
fn a_listen_error_names_the_setting() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let (log, exited) = start_control_plane(&[], &["--admin-addr", &addr]);
    assert_eq!(exited, Some(1), "{log}");
    let want = format!("PQMESH_ADMIN_ADDR={addr}: address in use");
    assert!(log.contains(&want), "{want:?} not in {log}");
}

const GOOD: &str = "apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  peers: [\"shop/web\"]
";

const BAD: &str = "# two documents; the second is wrong
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: fine, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  peers: [\"shop/web\"]
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: broken, namespace: shop}
spec:
  selectr: {matchLabels: {app: orders}}
  peers: [\"shop/web\"]
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: dangling, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  peers: [\"shop/web\"]
  token: {issuers: [nobody]}
";

#[test]
fn validate_reports_file_line_and_reason() {
    let dir = tempfile_dir();
    let good = dir.join("good.yaml");
    let bad = dir.join("bad.yaml");
    let syntax = dir.join("syntax.yaml");
    let tokens = dir.join("bootstrap-tokens.yaml");
    std::fs::write(&good, GOOD).expect("write");
    std::fs::write(&bad, BAD).expect("write");
    std::fs::write(&syntax, "kind: AccessPolicy\nmetadata: [unclosed\n").expect("write");
    std::fs::write(&tokens, "tokens:\n  - token: x\n    namespace: shop\n").expect("write");
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();

    let o = run("pqmesh-control-plane", &["validate", &s(&good)], &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.ends_with("1 file(s), 1 policy object(s): valid\n"),
        "{out}"
    );

    let o = run(
        "pqmesh-control-plane",
        &["validate", &s(&good), &s(&bad), &s(&syntax), &s(&tokens)],
        &[],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let bad_at = format!("{}:9: AccessPolicy shop/broken: ", s(&bad));
    assert!(out.contains(&bad_at), "{bad_at:?} not in\n{out}");
    assert!(
        out.contains("selectr"),
        "the reason names the misspelt field:\n{out}"
    );
    let dangling = format!(
        "{}:16: AccessPolicy shop/dangling: spec.token.issuers: no accepted TokenIssuer",
        s(&bad)
    );
    assert!(out.contains(&dangling), "{dangling:?} not in\n{out}");
    assert!(
        out.contains(&format!("{}:3: ", s(&syntax))),
        "syntax error line:\n{out}"
    );
    assert!(
        out.contains(&format!("{}:", s(&tokens))),
        "bootstrap tokens checked:\n{out}"
    );
    assert!(
        !out.contains("shop/fine"),
        "the good document is not reported:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Outside review F3/F4: a secret written where the file expects a map was repeated in
/// `validate`'s output and the control plane's log (serde's `invalid type: string "…"`); a
/// `jwksUri` with credentials and two TokenIssuers of one namespace for the same issuer passed
/// `validate` and were pushed, for every selected sidecar to refuse. Now `validate` (and the
/// reload, which runs the same code) names the problem without the secret.
#[test]
fn validate_and_the_control_plane_never_repeat_a_secret() {
    use std::os::unix::fs::PermissionsExt;
    const TOKEN: &str = "tok-2f8a9c1e7b3d4a5f6e0d";
    const SECRET: &str = "sec-9b1c7e2d4f6a8c0e1d3b";
    const PASSWORD: &str = "pw-7c3e9a1f5b2d8e4c6a0f";
    let dir = tempfile_dir();
    let tokens = dir.join("bootstrap-tokens.yaml");
    let secrets = dir.join("secrets.yaml");
    let policies = dir.join("issuers.yaml");
    std::fs::write(&tokens, format!("tokens: \"{TOKEN}\"\n")).expect("write");
    std::fs::write(
        &secrets,
        format!("secrets:\n- namespace: shop\n  name: gw\n  data: \"{SECRET}\"\n"),
    )
    .expect("write");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let issuer = |name: &str, iss: &str, jwks: &str| {
        format!(
            "apiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{issuer: \"{iss}\", audiences: [a], jwksUri: \"{jwks}\"}}\n"
        )
    };
    std::fs::write(
        &policies,
        [
            issuer("web", "https://idp.example", "https://idp.example/jwks"),
            issuer("api", "https://idp.example", "https://idp.example/jwks"),
            issuer(
                "creds",
                "https://other.example",
                &format!("https://u:{PASSWORD}@other.example/jwks"),
            ),
        ]
        .join("---\n"),
    )
    .expect("write");
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let o = run(
        "pqmesh-control-plane",
        &["validate", &s(&tokens), &s(&secrets), &s(&policies)],
        &[],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    for secret in [TOKEN, SECRET, PASSWORD] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} shown:\n{out}{err}"
        );
    }
    for want in [
        format!("{}:1: tokens: invalid type, expected a sequence", s(&tokens)),
        format!("{}:4: secrets[0].data: invalid type, expected a map", s(&secrets)),
        "TokenIssuer shop/api: spec.issuer \"https://idp.example\" is already the issuer of TokenIssuer shop/web".to_owned(),
        "TokenIssuer shop/creds: spec.jwksUri \"***@other.example/jwks\" must not contain credentials".to_owned(),
    ] {
        assert!(out.contains(&want), "{want:?} not in\n{out}");
    }

    // The running control plane reads the same files at start: whatever it logs, no secret.
    let mut child = Command::new(binary("pqmesh-control-plane"))
        .args(["--local", &s(&dir), "--init"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PQMESH_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("PQMESH_ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "PQMESH_ADMIN_LOCAL_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the control plane starts");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && child.try_wait().expect("wait").is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let o = child.wait_with_output().expect("output");
    let (out, err) = text(&o);
    assert!(
        out.contains("bootstrap-tokens.yaml") || err.contains("bootstrap-tokens.yaml"),
        "the bad file is reported:\n{out}{err}"
    );
    for secret in [TOKEN, SECRET, PASSWORD] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} logged:\n{out}{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/configuration.md: the settings tables are generated from the daemons' tables. Run with
/// PQMESH_UPDATE_DOCS=1 to rewrite the generated part after changing a setting.
#[test]
fn the_configuration_reference_matches_the_settings_tables() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    const BEGIN: &str = "<!-- generated from the settings tables: begin -->\n";
    const END: &str = "<!-- generated from the settings tables: end -->\n";
    let mut generated = String::from(BEGIN);
    let cp = pqmesh_control_plane::config::TABLES;
    for (title, table) in [
        ("### pqmesh-control-plane", cp[0]),
        ("### pqmesh-control-plane, `--kubernetes` mode", cp[1]),
        (
            "### pqmesh-control-plane: what the injector gives sidecars",
            cp[2],
        ),
        ("### pqmesh-sidecar", pqmesh_sidecar::config::SETTINGS),
        (
            "### pqmesh-gateway (`--kubernetes` for Kubernetes mode; docs/gateway.md)",
            pqmesh_gateway::config::SETTINGS,
        ),
        ("### Both daemons: logging", pqmesh_mtls::logging::SETTINGS),
    ] {
        generated.push_str(&format!("\n{title}\n\n{}", markdown_table(table)));
    }
    generated.push_str("\n### Per-pod annotations (override the injector's settings for one pod)\n\n| Annotation | Sets |\n|---|---|\n");
    for (key, what) in pqmesh_control_plane::inject::PROXY_ANNOTATIONS {
        generated.push_str(&format!("| `{key}` | {what} |\n"));
    }
    generated.push_str(END);
    let (before, after) = match (current.find(BEGIN), current.find(END)) {
        (Some(b), Some(e)) => (&current[..b], &current[e + END.len()..]),
        _ => (current.as_str(), ""),
    };
    let wanted = format!("{before}{generated}{after}");
    if std::env::var_os("PQMESH_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &wanted).expect("write docs/configuration.md");
        return;
    }
    assert!(
        current == wanted,
        "docs/configuration.md is out of date with the settings tables: run \
         `PQMESH_UPDATE_DOCS=1 cargo nextest run -p pqmesh-tests -E 'test(the_configuration_reference)'`"
    );
}

/// `pqmesh-gateway`: a bad or missing setting is one line and exit 2; a directory it cannot read
/// is one line and exit 1 (nothing half-started).
#[test]
fn gateway_errors_are_one_line() {
    let o = run("pqmesh-gateway", &[], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("pqmesh-gateway: error: PQMESH_BOOTSTRAP_TOKEN_FILE"),
        "{err}"
    );
    let dir = pqmesh_tests::TempDir::new("gw-cli");
    let bundle = dir.path().join("bundle.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).unwrap();
    std::fs::write(&bundle, cert.cert.pem()).unwrap();
    let bundle = bundle.display().to_string();
    let base = [
        ("PQMESH_CONTROL_PLANE_ADDR", "127.0.0.1:1"),
        ("PQMESH_TRUST_BUNDLE", bundle.as_str()),
        ("PQMESH_BOOTSTRAP_TOKEN", "a-long-enough-token-0123"),
    ];
    let o = run(
        "pqmesh-gateway",
        &["--gateway-listen-host", "nowhere"],
        &[&base[..], &[("PQMESH_GATEWAY_DIR", "/x")]].concat(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("PQMESH_GATEWAY_LISTEN_HOST=\"nowhere\""),
        "{err}"
    );
    let missing = dir.path().join("missing").display().to_string();
    let o = run(
        "pqmesh-gateway",
        &[],
        &[&base[..], &[("PQMESH_GATEWAY_DIR", missing.as_str())]].concat(),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing/config"), "{err}");
}
