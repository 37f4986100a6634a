//! AMQP URIs (`amqp://user:pass@host:port/vhost`) as RabbitMQ documents them:
//! user, password and vhost are percent-decoded; the port defaults to 5672,
//! the credentials to guest/guest and an absent or empty vhost to "/".

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct AmqpUri {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
}

impl AmqpUri {
    pub fn parse(uri: &str) -> Result<AmqpUri> {
        let rest = match uri.split_once("://") {
            Some(("amqp", rest)) => rest,
            Some(("amqps", _)) => bail!("amqps:// (TLS) is not supported by this tool: {uri}"),
            _ => bail!("not an amqp:// URI: {uri}"),
        };
        // The query (?heartbeat=...) is not used: heartbeats are always off.
        let rest = rest.split('?').next().unwrap_or_default();
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (decode(user)?, decode(pass)?),
                None => (decode(u)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = split_host_port(hostport)?;
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            decode(path)?
        };
        Ok(AmqpUri {
            user,
            password,
            host: if host.is_empty() {
                "localhost".to_string()
            } else {
                host
            },
            port,
            vhost,
        })
    }

    /// host:port for `TcpStream::connect`.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URI with the password hidden, for reports.
    pub fn redacted(&self) -> String {
        let vhost = if self.vhost == "/" {
            "%2f".to_string()
        } else {
            self.vhost.replace('%', "%25").replace('/', "%2f")
        };
        format!("amqp://{}:***@{}/{}", self.user, self.addr(), vhost)
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .with_context(|| format!("unclosed '[' in host {hostport:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p)?,
            None => 5672,
        };
        return Ok((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), parse_port(p)?)),
        None => Ok((hostport.to_string(), 5672)),
    }
}

fn parse_port(p: &str) -> Result<u16> {
    if p.is_empty() {
        return Ok(5672);
    }
    p.parse().with_context(|| format!("bad port {p:?}"))
}

/// Percent-decode a URI component.
fn decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .with_context(|| format!("truncated percent escape in {s:?}"))?;
            let v = u8::from_str_radix(hex, 16)
                .with_context(|| format!("bad percent escape %{hex} in {s:?}"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("{s:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let u = AmqpUri::parse("amqp://bob:s%40cret@example.com:5673/my%2fvhost").unwrap();
        assert_eq!(
            u,
            AmqpUri {
                user: "bob".into(),
                password: "s@cret".into(),
                host: "example.com".into(),
                port: 5673,
                vhost: "my/vhost".into(),
            }
        );
        assert_eq!(u.redacted(), "amqp://bob:***@example.com:5673/my%2fvhost");
    }

    #[test]
    fn defaults() {
        let u = AmqpUri::parse("amqp://127.0.0.1").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str()), ("guest", "guest"));
        assert_eq!(u.port, 5672);
        assert_eq!(u.vhost, "/");
        assert_eq!(AmqpUri::parse("amqp://h/%2f").unwrap().vhost, "/");
        assert_eq!(AmqpUri::parse("amqp://h:1/").unwrap().vhost, "/");
        assert_eq!(AmqpUri::parse("amqp://h/v?heartbeat=5").unwrap().vhost, "v");
        assert_eq!(AmqpUri::parse("amqp://[::1]:5/").unwrap().addr(), "[::1]:5");
    }

    #[test]
    fn refusals() {
        assert!(AmqpUri::parse("http://h/").is_err());
        assert!(AmqpUri::parse("amqps://h/").is_err());
        assert!(AmqpUri::parse("amqp://h:port/").is_err());
        assert!(AmqpUri::parse("amqp://h/%zz").is_err());
        assert!(AmqpUri::parse("amqp://h/%2").is_err());
    }
}
