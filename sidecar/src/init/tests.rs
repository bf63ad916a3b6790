use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

const V4_DEFAULT: &str = "*nat
:PQMESH_INBOUND - [0:0]
:PQMESH_OUTPUT - [0:0]
-A PQMESH_INBOUND -p tcp --dport 9090 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15000 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15001 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15006 -j RETURN
-A PQMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A PQMESH_OUTPUT -s 127.0.0.6/32 -o lo -p tcp -m owner --uid-owner 1337 -j RETURN
-A PQMESH_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 1337 -j REDIRECT --to-ports 15006
-A PQMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A PQMESH_OUTPUT -d 127.0.0.0/8 -j RETURN
-A PQMESH_OUTPUT -d 169.254.169.254/32 -j RETURN
-A PQMESH_OUTPUT -d 10.0.0.0/8 -j RETURN
-A PQMESH_OUTPUT -p tcp --dport 5432 -j RETURN
-A PQMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

const V6_DEFAULT: &str = "*nat
:PQMESH_INBOUND - [0:0]
:PQMESH_OUTPUT - [0:0]
-A PQMESH_INBOUND -p tcp --dport 9090 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15000 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15001 -j RETURN
-A PQMESH_INBOUND -p tcp --dport 15006 -j RETURN
-A PQMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A PQMESH_OUTPUT -o lo ! -d ::1/128 -p tcp -m owner --uid-owner 1337 -j REDIRECT --to-ports 15006
-A PQMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A PQMESH_OUTPUT -d ::1/128 -j RETURN
-A PQMESH_OUTPUT -d fd00:ec2::254 -j RETURN
-A PQMESH_OUTPUT -d 2001:db8::/32 -j RETURN
-A PQMESH_OUTPUT -p tcp --dport 5432 -j RETURN
-A PQMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

fn mixed() -> InitConfig {
    InitConfig::from_args(&args(
        "--exclude-inbound-ports 9090 --exclude-outbound-ports 5432 \
         --exclude-outbound-cidrs 169.254.169.254/32,fd00:ec2::254,10.0.0.0/8,2001:db8::/32",
    ))
    .unwrap()
}

#[test]
fn both_families_get_the_same_rules_and_each_its_own_cidrs() {
    let c = mixed();
    assert_eq!(c.restore_input(Family::V4), V4_DEFAULT);
    assert_eq!(c.restore_input(Family::V6), V6_DEFAULT);
}

#[test]
fn cidrs_are_sorted_by_family_as_given() {
    let c = mixed();
    let of = |f: Family| {
        c.exclude_outbound_cidrs
            .iter()
            .filter(|x| x.family == f)
            .map(|x| x.text.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(of(Family::V4), ["169.254.169.254/32", "10.0.0.0/8"]);
    assert_eq!(of(Family::V6), ["fd00:ec2::254", "2001:db8::/32"]);
}

#[test]
fn dry_run_prints_both_rule_sets_and_the_ipv6_verdict() {
    let mut c = mixed();
    c.action = InitAction::DryRun;
    let present = Ipv6State::Present("/proc/net/if_inet6 lists 2 IPv6 address(es)".into());
    let text = run_with(&c, &present).unwrap();
    assert!(text.starts_with("# IPv6 in this network namespace: yes (/proc/net/if_inet6 lists 2"));
    assert!(text.contains(&format!(
        "# IPv4: iptables-restore --noflush <<EOF\n{V4_DEFAULT}# EOF\n"
    )));
    assert!(text.contains(&format!(
        "# IPv6: ip6tables-restore --noflush <<EOF\n{V6_DEFAULT}# EOF\n"
    )));
    for tool in ["iptables", "ip6tables"] {
        for jump in [
            "-t nat -A PREROUTING -p tcp -j PQMESH_INBOUND",
            "-t nat -A OUTPUT -p tcp -j PQMESH_OUTPUT",
        ] {
            let line = format!("# unless already present: {tool} {jump}\n");
            assert!(text.contains(&line), "{line:?} missing from\n{text}");
        }
    }
    let absent = Ipv6State::Absent("the kernel has no IPv6".into());
    let text = run_with(&c, &absent).unwrap();
    assert!(text.starts_with("# IPv6 in this network namespace: no (the kernel has no IPv6)"));
    assert!(
        text.contains("# IPv6: ip6tables-restore"),
        "printed even so"
    );
}

#[test]
fn bad_arguments_are_refused_precisely() {
    let cases = [
        ("--proxy-uid root", "not a number"),
        ("--outbound-port 0", "not a TCP port"),
        ("--inbound-port 70000", "not a TCP port"),
        ("--exclude-inbound-ports 80,x", "not a TCP port"),
        (
            "--exclude-outbound-cidrs 10.0.0.0/33",
            "\"10.0.0.0/33\": not an IPv4 or IPv6",
        ),
        ("--exclude-outbound-cidrs 10.0.0/8", "not an IPv4 or IPv6"),
        (
            "--exclude-outbound-cidrs 10.0.0.0/+8",
            "not an IPv4 or IPv6",
        ),
        (
            "--exclude-outbound-cidrs fd00::/129",
            "\"fd00::/129\": not an IPv4 or IPv6",
        ),
        (
            "--exclude-outbound-cidrs fe80::1%eth0",
            "not an IPv4 or IPv6",
        ),
        (
            "--exclude-outbound-cidrs fd00:::1/64",
            "not an IPv4 or IPv6",
        ),
        ("--exclude-outbound-cidrs 10.0.0.0/", "not an IPv4 or IPv6"),
        ("--outbound-port 15006", "must differ"),
        ("--frobnicate", "unexpected argument '--frobnicate'"),
        ("--iptables", "a value is required for '--iptables <PATH>'"),
        (
            "--ip6tables",
            "a value is required for '--ip6tables <PATH>'",
        ),
    ];
    for (a, want) in cases {
        let err = InitConfig::from_args(&args(a)).unwrap_err().to_string();
        assert!(err.contains(want), "{a}: {err}");
    }
}

#[test]
fn a_missing_iptables_is_a_clear_error() {
    let mut c = InitConfig::from_args(&[]).unwrap();
    c.iptables = "/nonexistent/iptables".into();
    let err = run_with(&c, &Ipv6State::Absent("test".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("install iptables"), "{err}");
}

/// A directory with fake `iptables`/`ip6tables` (and `-restore`) scripts: the IPv4 ones succeed,
/// the IPv6 ones do what `v6_restore` says.
fn fake_tools(v6_restore: &str) -> (std::path::PathBuf, InitConfig) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "pqmesh-init-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("iptables", "exit 0");
    script("iptables-restore", "cat >/dev/null; exit 0");
    script("ip6tables", "exit 0");
    script("ip6tables-restore", v6_restore);
    let mut c = InitConfig::from_args(&[]).unwrap();
    c.iptables = dir.join("iptables").display().to_string();
    c.ip6tables = dir.join("ip6tables").display().to_string();
    (dir, c)
}

#[test]
fn with_ipv6_present_init_fails_when_ip6tables_cannot_program_nat() {
    let no_nat = "echo \"ip6tables-restore v1.8.9 (legacy): ip6tables-restore: unable to initialize table 'nat'\" >&2\n\
                  echo 'Error occurred at line: 1' >&2\nexit 1";
    let (dir, c) = fake_tools(no_nat);
    let present = Ipv6State::Present("/proc/net/if_inet6 lists 1 IPv6 address(es)".into());
    let err = run_with(&c, &present).unwrap_err();
    assert!(matches!(err, InitError::Ipv6Open { .. }), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    for want in [
        "IPv6 is enabled in this pod's network namespace (/proc/net/if_inet6 lists 1",
        "would bypass the sidecar",
        "unable to initialize table 'nat'; Error occurred at line: 1",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
    // Without IPv6 in the namespace the same tools are fine: nothing to intercept.
    let absent = Ipv6State::Absent("no IPv6 addresses and net.ipv6.conf.all.disable_ipv6=1".into());
    let out = run_with(&c, &absent).unwrap();
    assert!(out.contains("pqmesh: IPv4: redirecting"), "{out}");
    assert!(
        out.contains("pqmesh: no IPv6 in this network namespace (no IPv6 addresses and net.ipv6.conf.all.disable_ipv6=1): IPv4 rules only"),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn with_ipv6_present_init_fails_when_ip6tables_is_missing() {
    let (dir, mut c) = fake_tools("cat >/dev/null; exit 0");
    c.ip6tables = "/nonexistent/ip6tables".into();
    let err = run_with(&c, &Ipv6State::Present("test".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("IPv6 is enabled"), "{err}");
    assert!(
        err.contains("/nonexistent/ip6tables-restore was not found"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn both_families_are_applied_when_ipv6_is_present() {
    let (dir, c) = fake_tools("cat >/dev/null; exit 0");
    let out = run_with(&c, &Ipv6State::Present("test".into())).unwrap();
    assert!(
        out.contains("pqmesh: IPv4: redirecting inbound TCP to :15006"),
        "{out}"
    );
    assert!(
        out.contains("pqmesh: IPv6: redirecting inbound TCP to :15006"),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ipv6_presence_is_judged_conservatively() {
    let probe = |if_inet6: Option<&str>, disable: Option<&str>, proc: bool| {
        Ipv6Probe {
            if_inet6: if_inet6.map(str::to_owned),
            all_disable_ipv6: disable.map(str::to_owned),
            proc_net_readable: proc,
        }
        .judge()
    };
    let lo = "00000000000000000000000000000001 01 80 10 80       lo\n";
    let ll = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
    let present = |s: &Ipv6State| matches!(s, Ipv6State::Present(_));
    // Any address, even only loopback or link-local, means IPv6 is there.
    assert!(present(&probe(Some(lo), Some("0\n"), true)));
    assert!(present(&probe(Some(ll), Some("1\n"), true)));
    // No address yet, but not disabled: an interface may still get one.
    assert!(present(&probe(Some(""), Some("0\n"), true)));
    // Unknowable without procfs.
    assert!(present(&probe(None, None, false)));
    assert_eq!(
        probe(Some(""), Some("1\n"), true),
        Ipv6State::Absent("no IPv6 addresses and net.ipv6.conf.all.disable_ipv6=1".into())
    );
    assert!(!present(&probe(None, None, true)), "kernel without IPv6");
}
