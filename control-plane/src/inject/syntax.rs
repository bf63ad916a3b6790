//! Parsers shared by the injector's configuration and the pod annotations: port lists, CIDR
//! lists and Kubernetes resource quantities. They accept exactly what `pqmesh-sidecar init` and
//! the API server accept, so an injected pod never fails later on a value we let through.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `"80, 443"` → `[80, 443]` (sorted, deduplicated). Empty text is an empty list.
pub(crate) fn ports(text: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = item
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{item:?} is not a TCP port (1-65535)"))?;
        out.push(port);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `"10.0.0.0/8, 169.254.169.254, fd00::/8"` → the same entries, checked. IPv4 or IPv6: the
/// init container gives each to iptables or ip6tables by its family.
pub(crate) fn cidrs(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (ip, len) = match item.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (item, None),
        };
        let len_ok = |max: u8| {
            len.is_none_or(|l| !l.starts_with('+') && l.parse::<u8>().is_ok_and(|l| l <= max))
        };
        let valid = (ip.parse::<Ipv4Addr>().is_ok() && len_ok(32))
            || (ip.parse::<Ipv6Addr>().is_ok() && len_ok(128));
        if !valid {
            return Err(format!(
                "{item:?} is not an IPv4 or IPv6 address or CIDR (like 10.0.0.0/8 or fd00::/8)"
            ));
        }
        if !out.iter().any(|c| c == item) {
            out.push(item.to_owned());
        }
    }
    Ok(out)
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`), as the API server parses it.
pub(crate) fn quantity(text: &str) -> Result<(), String> {
    let bad = || format!("{text:?} is not a Kubernetes quantity (like 100m or 64Mi)");
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(digits_end);
    let dots = number.matches('.').count();
    if number.is_empty() || number == "." || dots > 1 {
        return Err(bad());
    }
    const SUFFIXES: [&str; 16] = [
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if SUFFIXES.contains(&suffix) {
        return Ok(());
    }
    let exponent = suffix.strip_prefix(['e', 'E']).ok_or_else(bad)?;
    let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if exponent.is_empty() || !exponent.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(())
}

/// The value of a quantity that `quantity` accepted, as a number (cores, bytes), to compare a
/// request with its limit; `None` when it is not one.
pub(crate) fn quantity_value(text: &str) -> Option<f64> {
    quantity(text).ok()?;
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => 10f64.powi(e[1..].parse::<i32>().ok()?),
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_values() {
        assert_eq!(quantity_value("100m"), Some(0.1));
        assert_eq!(quantity_value("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        assert_eq!(quantity_value("-1"), Some(-1.0));
        assert_eq!(quantity_value("lots"), None);
    }

    #[test]
    fn port_lists() {
        assert_eq!(ports(""), Ok(vec![]));
        assert_eq!(ports(" 443, 80,80 ,"), Ok(vec![80, 443]));
        for bad in ["0", "65536", "http", "-1", "80;443"] {
            assert!(ports(bad).unwrap_err().contains("not a TCP port"), "{bad}");
        }
    }

    #[test]
    fn cidr_lists() {
        assert_eq!(
            cidrs("10.0.0.0/8, 169.254.169.254,10.0.0.0/8, fd00::/8,fd00:ec2::254"),
            Ok(vec![
                "10.0.0.0/8".to_owned(),
                "169.254.169.254".to_owned(),
                "fd00::/8".to_owned(),
                "fd00:ec2::254".to_owned()
            ])
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "fe80::1%eth0",
            "fd00:::1",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
        ] {
            assert!(
                cidrs(bad).unwrap_err().contains("not an IPv4 or IPv6"),
                "{bad}"
            );
        }
    }

    #[test]
    fn quantities() {
        for good in [
            "10m", "16Mi", "1", "0.5", "1.5Gi", "2e3", "1E-2", "+1", "100k", ".5",
        ] {
            assert_eq!(quantity(good), Ok(()), "{good}");
        }
        for bad in ["", "m", "10 m", "10mb", "1..2", "1e", "Mi", "1.2.3", "ten"] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
    }
}
