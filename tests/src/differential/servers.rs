//! The stock servers, each running an echo app from `tests/differential/` on three ports (one
//! per policy: rules over STRICT mTLS, rules over PERMISSIVE plaintext, identity only). Every
//! request an app receives is logged as a JSON line on its stdout and collected here. A missing
//! runtime fails loudly with the fix: `./test.sh` installs all of them.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::corpus::Over;
use super::oracle::Received;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Python's stdlib `wsgiref.simple_server`.
    Wsgiref,
    /// gunicorn, stock settings (since 22.0 it drops header names with `_`).
    Gunicorn,
    /// gunicorn with `--header-map dangerous`: how gunicorn < 22, and apps that re-enable
    /// underscore headers, map them (both `-` and `_` into one HTTP_* key).
    GunicornDangerous,
    /// Node 24's `http` (and `http2` for h2c).
    Node,
    /// The JDK's `com.sun.net.httpserver`.
    Java,
}

pub const ALL: [Kind; 5] = [
    Kind::Wsgiref,
    Kind::Gunicorn,
    Kind::GunicornDangerous,
    Kind::Node,
    Kind::Java,
];

#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub rules: u16,
    pub plain: u16,
    pub peers: u16,
    pub relay: u16,
}

impl Ports {
    pub fn for_over(&self, over: Over) -> u16 {
        match over {
            Over::Mtls => self.rules,
            Over::Plain => self.plain,
            Over::PeersOnly => self.peers,
            Over::Relay => self.relay,
        }
    }
}

pub struct StockServer {
    pub kind: Kind,
    pub name: &'static str,
    pub version: String,
    /// Speaks HTTP/2 with prior knowledge (gets the corpus' h2 variants).
    pub h2: bool,
    pub ports: Ports,
    log: Arc<Mutex<Vec<String>>>,
    child: Child,
}

impl StockServer {
    /// The requests the app logged on `port` since the last call.
    pub fn take_received(&self, port: u16) -> Vec<Received> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<Received> = log
            .drain(..)
            .map(|l| {
                Received::from_json(&l)
                    .unwrap_or_else(|| panic!("{}: unreadable echo line {l}", self.name))
            })
            .collect();
        let (mine, others): (Vec<Received>, Vec<Received>) =
            all.into_iter().partition(|r| r.port == port);
        log.extend(others.into_iter().map(|r| r.line));
        mine
    }
}

impl Drop for StockServer {
    fn drop(&mut self) {
        // SIGTERM first: gunicorn's master then stops its worker too.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn output(cmd: &mut std::process::Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| {
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        s.trim().to_owned()
    })
}

fn python() -> (String, String) {
    let python = std::env::var("PQMESH_PYTHON3").unwrap_or_else(|_| "python3".to_owned());
    let gunicorn = output(std::process::Command::new(&python).args([
        "-c",
        "import gunicorn, sys; print(gunicorn.__version__, sys.version.split()[0])",
    ]))
    .unwrap_or_else(|| {
        panic!("{python} with gunicorn not found: run ./test.sh (pip install gunicorn)")
    });
    (python, gunicorn)
}

fn java() -> (String, String) {
    let java = std::env::var("PQMESH_JAVA").unwrap_or_else(|_| "java".to_owned());
    let version = output(std::process::Command::new(&java).arg("-version")).unwrap_or_else(|| {
        panic!("{java} not found: run ./test.sh, which installs openjdk-17-jdk-headless")
    });
    let first = version.lines().next().unwrap_or("").to_owned();
    (java, first)
}

/// Starts one server and waits until all its ports accept connections.
pub async fn start(kind: Kind) -> StockServer {
    let dir = super::data_dir();
    let ports = Ports {
        rules: free_port(),
        plain: free_port(),
        peers: free_port(),
        relay: free_port(),
    };
    let port_args: Vec<String> = [ports.rules, ports.plain, ports.peers, ports.relay]
        .iter()
        .map(u16::to_string)
        .collect();
    let (mut cmd, name, version, h2) = match kind {
        Kind::Wsgiref => {
            let (py, v) = python();
            let mut c = Command::new(py);
            c.arg("wsgi_echo.py").arg("wsgiref").args(&port_args);
            let py_version = v.split_whitespace().nth(1).unwrap_or("?").to_owned();
            (
                c,
                "wsgiref",
                format!("wsgiref (Python {py_version})"),
                false,
            )
        }
        Kind::Gunicorn | Kind::GunicornDangerous => {
            let (py, v) = python();
            let name = if kind == Kind::Gunicorn {
                "gunicorn"
            } else {
                "gunicorn-dangerous"
            };
            let mut c = Command::new(py);
            c.args(["-m", "gunicorn", "--workers", "1", "--chdir"])
                .arg(&dir)
                .env("DIFF_SERVER", name);
            for p in &port_args {
                c.arg("-b").arg(format!("127.0.0.1:{p}"));
            }
            let mut it = v.split_whitespace();
            let (gv, pv) = (it.next().unwrap_or("?"), it.next().unwrap_or("?"));
            let mut version = format!("gunicorn {gv} sync worker (Python {pv})");
            if kind == Kind::GunicornDangerous {
                c.args(["--header-map", "dangerous"]);
                version.push_str(" --header-map dangerous");
            }
            c.arg("wsgi_echo:app");
            (c, name, version, false)
        }
        Kind::Node => {
            let node = crate::oauth::node24();
            let v = output(std::process::Command::new(&node).arg("--version")).unwrap_or_default();
            assert!(
                v.starts_with("v24."),
                "{} is {v:?}, not Node 24: run ./test.sh",
                node.display()
            );
            let mut c = Command::new(node);
            c.arg("node_echo.js").args(&port_args);
            (c, "node", format!("Node {v} http + http2"), true)
        }
        Kind::Java => {
            let (java, v) = java();
            let mut c = Command::new(java);
            c.arg("JavaEcho.java").args(&port_args);
            (c, "java", format!("com.sun.net.httpserver ({v})"), false)
        }
    };
    let mut child = cmd
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1") // no __pycache__ in the source tree
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(json) = line.strip_prefix("DIFF ") {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(json.to_owned());
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let err_sink = stderr.clone();
    let mut err_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = err_lines.next_line().await {
            let mut s = err_sink.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() < 64 * 1024 {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut up = 0;
        for p in [ports.rules, ports.plain, ports.peers] {
            if tokio::net::TcpStream::connect(("127.0.0.1", p))
                .await
                .is_ok()
            {
                up += 1;
            }
        }
        if up == 3 {
            break;
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || tokio::time::Instant::now() > deadline {
            panic!(
                "{name} did not start ({exited:?}); its stderr:\n{}",
                stderr.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    StockServer {
        kind,
        name,
        version,
        h2,
        ports,
        log,
        child,
    }
}
