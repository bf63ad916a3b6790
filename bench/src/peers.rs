//! The proxy pairs under test, each a client-side proxy (plaintext in, mTLS out) and a
//! server-side proxy (mTLS in, plaintext to the backend), started as real processes:
//! pqmesh (two sidecars in explicit mode + a control plane), and the classical peers nginx
//! (stream module), haproxy and stunnel4 with certificates made by openssl at run time.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PEERS: [&str; 3] = ["nginx", "haproxy", "stunnel"];
/// The machine's floor, not a peer: a pair of plaintext TCP relays (haproxy in TCP mode, no TLS)
/// — what moving the bytes through two more processes costs here before any cryptography or
/// HTTP. Reported beside the targets, never counted as the best peer.
pub const FLOOR: &str = "tcp-relay";
/// The name the classical server certificate carries (SAN DNS).
pub const PEER_SERVER_NAME: &str = "localhost";
pub const CP_ID: &str = "spiffe://cluster.local/ns/pqmesh-system/sa/pqmesh-control-plane";
pub const API_ID: &str = "spiffe://cluster.local/ns/shop/sa/api";

/// A running pair. Dropping it kills the processes.
pub struct Pair {
    pub name: String,
    /// Plaintext entry of the client-side proxy (what the load generator dials).
    pub entry: SocketAddr,
    /// mTLS listener of the server-side proxy.
    pub tls: SocketAddr,
    pub client_pid: u32,
    pub server_pid: u32,
    children: Vec<Child>,
}

impl Drop for Pair {
    /// SIGTERM first, so nginx's master stops its workers (a SIGKILLed master leaves them
    /// running, holding CPU and ports into the next measurement), then SIGKILL after 2 s.
    fn drop(&mut self) {
        stop(&mut self.children);
    }
}

/// SIGTERM to each child, then SIGKILL to any still running after 2 s.
pub fn stop(children: &mut [Child]) {
    for c in children.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for c in children.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test-only ECDSA P-256 CA, server and client certificates for the classical peers, made now in
/// `dir` (never committed).
pub fn make_peer_certs(dir: &Path) {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bench-ca",
            "-keyout",
        ])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    for (name, eku) in [("server", "serverAuth"), ("client", "clientAuth")] {
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.csr"))));
        std::fs::write(
            p(&format!("{name}.ext")),
            format!("subjectAltName=DNS:{PEER_SERVER_NAME}\nextendedKeyUsage={eku}\n"),
        )
        .expect("write ext");
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
            .arg(p(&format!("{name}.csr")))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p(&format!("{name}.ext")))
            .arg("-out")
            .arg(p(&format!("{name}.pem"))));
        // haproxy wants certificate and key in one file.
        let combined = std::fs::read_to_string(p(&format!("{name}.pem"))).expect("pem")
            + &std::fs::read_to_string(p(&format!("{name}.key"))).expect("key");
        std::fs::write(p(&format!("{name}-combined.pem")), combined).expect("write");
    }
}

pub fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"))
}

/// Waits until something accepts on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Global and default settings of every haproxy relay (the TLS peer and the plaintext floor).
const HAPROXY_COMMON: &str = "global\n  maxconn 9000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n";

/// Starts one classical pair in front of `backend`; `dir` holds the certificates.
pub fn start_peer(name: &str, dir: &Path, backend: SocketAddr) -> Pair {
    let (entry, tls) = (free_port(), free_port());
    let d = dir.display();
    let cfg = |side: &str, ext: &str| dir.join(format!("{name}-{side}.{ext}"));
    let (client, server) = match name {
        "nginx" => {
            let common = |side: &str| {
                format!(
                    "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nmaster_process on;\nworker_processes auto;\nworker_rlimit_nofile 20000;\npid {d}/nginx-{side}.pid;\nerror_log {d}/nginx-{side}.log warn;\nevents {{ worker_connections 20000; }}\n"
                )
            };
            let c = common("client") + &format!(
                "stream {{ server {{ listen {entry}; proxy_pass {tls}; proxy_ssl on; proxy_ssl_protocols TLSv1.3; proxy_ssl_certificate {d}/client.pem; proxy_ssl_certificate_key {d}/client.key; proxy_ssl_trusted_certificate {d}/ca.pem; proxy_ssl_verify on; proxy_ssl_name {PEER_SERVER_NAME}; proxy_ssl_server_name on; proxy_ssl_session_reuse on; }} }}\n"
            );
            let s = common("server") + &format!(
                "stream {{ server {{ listen {tls} ssl; ssl_protocols TLSv1.3; ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key; ssl_client_certificate {d}/ca.pem; ssl_verify_client on; ssl_session_cache shared:bench:10m; proxy_pass {backend}; }} }}\n"
            );
            (c, s)
        }
        "haproxy" => {
            let c = format!(
                "{HAPROXY_COMMON}frontend fe\n  bind {entry}\n  default_backend be\nbackend be\n  server s {tls} ssl crt {d}/client-combined.pem ca-file {d}/ca.pem verify required verifyhost {PEER_SERVER_NAME} sni str({PEER_SERVER_NAME}) ssl-min-ver TLSv1.3\n"
            );
            let s = format!(
                "{HAPROXY_COMMON}frontend fe\n  bind {tls} ssl crt {d}/server-combined.pem ca-file {d}/ca.pem verify required ssl-min-ver TLSv1.3\n  default_backend be\nbackend be\n  server app {backend}\n"
            );
            (c, s)
        }
        FLOOR => {
            let relay = |from: SocketAddr, to: SocketAddr| {
                format!("{HAPROXY_COMMON}frontend fe\n  bind {from}\n  default_backend be\nbackend be\n  server s {to}\n")
            };
            (relay(entry, tls), relay(tls, backend))
        }
        "stunnel" => {
            let common = "foreground = yes\npid =\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";
            let c = format!(
                "{common}[c]\nclient = yes\naccept = {entry}\nconnect = {tls}\ncert = {d}/client.pem\nkey = {d}/client.key\nCAfile = {d}/ca.pem\nverifyChain = yes\ncheckHost = {PEER_SERVER_NAME}\nsni = {PEER_SERVER_NAME}\nsslVersionMin = TLSv1.3\n"
            );
            let s = format!(
                "{common}[s]\naccept = {tls}\nconnect = {backend}\ncert = {d}/server.pem\nkey = {d}/server.key\nCAfile = {d}/ca.pem\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n"
            );
            (c, s)
        }
        other => panic!("unknown peer {other}"),
    };
    let ext = if name == "stunnel" { "conf" } else { "cfg" };
    std::fs::write(cfg("client", ext), client).expect("write config");
    std::fs::write(cfg("server", ext), server).expect("write config");
    let command = |side: &str| -> Command {
        let file = cfg(side, ext);
        match name {
            "nginx" => {
                let mut c = Command::new("nginx");
                c.arg("-p").arg(dir).arg("-c").arg(file);
                c
            }
            "haproxy" | FLOOR => {
                let mut c = Command::new("haproxy");
                c.arg("-db").arg("-f").arg(file);
                c
            }
            _ => {
                let mut c = Command::new("stunnel4");
                c.arg(file);
                c
            }
        }
    };
    let s = spawn(
        &mut command("server"),
        &dir.join(format!("{name}-server.out")),
    );
    let c = spawn(
        &mut command("client"),
        &dir.join(format!("{name}-client.out")),
    );
    wait_listening(tls, &format!("{name} server side"));
    wait_listening(entry, &format!("{name} client side"));
    Pair {
        name: name.to_owned(),
        entry,
        tls,
        client_pid: c.id(),
        server_pid: s.id(),
        children: vec![c, s],
    }
}

/// A control plane process in local mode on `dir`.
pub struct ControlPlaneProcess {
    pub grpc: SocketAddr,
    pub dir: PathBuf,
    pub tokens: Vec<(String, String)>,
    pub child: Child,
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlaneProcess {
    /// `accounts`: service accounts in namespace `shop` that get a bootstrap token.
    pub fn start(bin_dir: &Path, dir: &Path, key_alg: &str, accounts: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("cp dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let tokens: Vec<(String, String)> = accounts
            .iter()
            .map(|sa| {
                (
                    sa.to_string(),
                    format!("bench-{sa}-{:032x}", rand::random::<u128>()),
                )
            })
            .collect();
        let mut yaml = String::from("tokens:\n");
        for (sa, t) in &tokens {
            yaml += &format!("  - token: {t}\n    namespace: shop\n    serviceAccount: {sa}\n");
        }
        let path = dir.join("bootstrap-tokens.yaml");
        std::fs::write(&path, yaml).expect("tokens");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let grpc = free_port();
        let child = spawn(
            Command::new(bin_dir.join("pqmesh-control-plane"))
                .arg("--local")
                .arg(dir)
                .env("PQMESH_GRPC_ADDR", grpc.to_string())
                .env("PQMESH_ADMIN_ADDR", free_port().to_string())
                .env("PQMESH_CA_KEY_ALG", key_alg)
                .env("PQMESH_LOG", "warn"),
            &dir.join("control-plane.log"),
        );
        wait_listening(grpc, "control plane");
        Self {
            grpc,
            dir: dir.to_owned(),
            tokens,
            child,
        }
    }

    pub fn token(&self, sa: &str) -> &str {
        &self.tokens.iter().find(|(s, _)| s == sa).expect("token").1
    }

    pub fn trust_bundle(&self) -> PathBuf {
        self.dir.join("trust-bundle.pem")
    }
}

/// Two sidecars in explicit mode: `web` (client side, outbound to `api`) and `api` (server
/// side, inbound to `backend`, admitting `shop/web`). `labels`: the server side's workload labels
/// (an AccessPolicy selecting them replaces the identity-only allow list).
pub fn start_pqmesh(
    name: &str,
    bin_dir: &Path,
    cp: &ControlPlaneProcess,
    key_alg: &str,
    backend: SocketAddr,
    labels: &str,
) -> Pair {
    start_pqmesh_with(name, bin_dir, cp, key_alg, backend, labels, &[])
}

/// As [`start_pqmesh`], with settings for the server-side sidecar only (e.g. an HTTP relay port).
pub fn start_pqmesh_with(
    name: &str,
    bin_dir: &Path,
    cp: &ControlPlaneProcess,
    key_alg: &str,
    backend: SocketAddr,
    labels: &str,
    server_env: &[(&str, String)],
) -> Pair {
    let (entry, tls) = (free_port(), free_port());
    let admins = [free_port(), free_port()];
    let base = |sa: &str, admin: SocketAddr| {
        let mut c = Command::new(bin_dir.join("pqmesh-sidecar"));
        c.env("PQMESH_CONTROL_PLANE_ADDR", cp.grpc.to_string())
            .env("PQMESH_TRUST_BUNDLE", cp.trust_bundle())
            .env("PQMESH_BOOTSTRAP_TOKEN", cp.token(sa))
            .env("PQMESH_KEY_ALG", key_alg)
            .env("PQMESH_ADMIN_ADDR", admin.to_string())
            .env("PQMESH_LOG", "warn");
        // `PQMESH_BENCH_SIDECAR_ENV="K=V K2=V2"`: extra settings for both sidecars only (e.g. a
        // runtime setting under test), not for the load generator.
        // `PQMESH_BENCH_BASELINE_ENV`: the same for the `*-baseline` pairs only, so an A/B of a
        // setting runs one build twice (`--baseline-bin-dir` = `--bin-dir`).
        let mut extra = std::env::var("PQMESH_BENCH_SIDECAR_ENV").unwrap_or_default();
        if name.ends_with("-baseline") {
            extra += " ";
            extra += &std::env::var("PQMESH_BENCH_BASELINE_ENV").unwrap_or_default();
        }
        for kv in extra.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                c.env(k, v);
            }
        }
        c
    };
    let mut server = base("api", admins[0]);
    server
        .env("PQMESH_INBOUND_ADDR", tls.to_string())
        .env("PQMESH_INBOUND_APP_ADDR", backend.to_string())
        .env("PQMESH_INBOUND_ALLOW", "shop/web")
        .env("PQMESH_WORKLOAD_LABELS", labels)
        .env("PQMESH_OUTBOUND_ADDR", free_port().to_string());
    server.envs(server_env.iter().map(|(k, v)| (k, v)));
    let mut client = base("web", admins[1]);
    client
        .env("PQMESH_INBOUND_ADDR", free_port().to_string())
        .env("PQMESH_INBOUND_ALLOW", "shop/api")
        .env("PQMESH_OUTBOUND_ADDR", entry.to_string())
        .env("PQMESH_OUTBOUND_PEER_ADDR", tls.to_string())
        .env("PQMESH_OUTBOUND_PEER_ID", API_ID);
    let s = spawn(
        &mut server,
        &cp.dir.join(format!("{name}-api-{key_alg}.log")),
    );
    let c = spawn(
        &mut client,
        &cp.dir.join(format!("{name}-web-{key_alg}.log")),
    );
    for admin in admins {
        wait_ready(admin);
    }
    Pair {
        name: name.to_owned(),
        entry,
        tls,
        client_pid: c.id(),
        server_pid: s.id(),
        children: vec![c, s],
    }
}

/// Waits until a sidecar's admin `/ready` answers 200 (it has its certificate).
pub fn wait_ready(admin: SocketAddr) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = TcpStream::connect_timeout(&admin, Duration::from_millis(200))
            .and_then(|mut t| {
                t.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut s = String::new();
                t.read_to_string(&mut s)?;
                Ok(s.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar admin {admin} never ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
