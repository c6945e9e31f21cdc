//! Network addresses as manifests give them: a host (a DNS name or an IP address) and a
//! `host:port` with a port from 1 to 65535 (an IPv6 address in brackets, `[::1]:22`). Host names
//! are checked by the `url` crate's host parser (WHATWG), so what passes here is what an URL of
//! the same host accepts.

/// A host: a DNS name, an IPv4 address or an IPv6 address (bare or in brackets); the error says
/// what is wrong with it.
pub fn host(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '@' || c == ':')
    {
        return Err("is not a host name or an IP address".into());
    }
    match url::Host::parse(s) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("is not a host name or an IP address ({e})")),
    }
}

/// A port from 1 to 65535.
pub fn port(p: u16) -> Result<u16, String> {
    if p == 0 {
        Err("0 is not a port (1 to 65535)".into())
    } else {
        Ok(p)
    }
}

/// `host:port` with both present and valid; (host, port).
pub fn host_port(s: &str) -> Result<(String, u16), String> {
    let (h, p) = s
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| "is not host:port (a port is needed)".to_string())?;
    let inner = match (h.strip_prefix('['), h.ends_with(']')) {
        (Some(rest), true) => &rest[..rest.len() - 1],
        (None, false) if h.contains(':') => {
            return Err("is not host:port (an IPv6 address goes in brackets: [::1]:22)".into())
        }
        (None, false) => h,
        _ => return Err("is not host:port (unbalanced brackets)".into()),
    };
    if h.starts_with('[') && inner.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!(
            "is not host:port ({inner:?} in brackets is not an IPv6 address)"
        ));
    }
    host(inner).map_err(|e| format!("is not host:port (the host {e})"))?;
    let port: u16 = p
        .parse()
        .map_err(|_| format!("is not host:port ({p:?} is not a port, 1 to 65535)"))?;
    self::port(port).map_err(|e| format!("is not host:port ({e})"))?;
    Ok((h.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in ["node-1", "node-1.example.net", "10.0.2.2", "::1", "[::1]"] {
            assert!(host(ok.trim_matches(['[', ']'])).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "a/b", "user@host", "host:22"] {
            assert!(host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_ports() {
        assert_eq!(host_port("10.0.0.5:80").unwrap(), ("10.0.0.5".into(), 80));
        assert_eq!(host_port("web-1:8080").unwrap(), ("web-1".into(), 8080));
        assert_eq!(host_port("[::1]:22").unwrap(), ("[::1]".into(), 22));
        for bad in [
            "",
            "web-1",
            ":80",
            "web-1:",
            "web-1:0",
            "web-1:65536",
            "web-1:http",
            "::1:22",
            "[::1:22",
            "[web]:22",
            "a b:80",
        ] {
            let e = host_port(bad).expect_err(bad);
            assert!(e.starts_with("is not host:port"), "{bad:?}: {e}");
        }
    }
}
