//! `HOST:PORT` addresses as given on command lines and in config files.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A host name or IP literal plus a port. Port 0 means "pick a free port"
/// where a process binds, and is rejected where it connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port }
    }

    /// The `http://HOST:PORT` URL that gRPC clients dial.
    pub fn http_url(&self) -> String {
        format!("http://{self}")
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| Error::InvalidAddress {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = input
            .strip_prefix("http://")
            .or_else(|| input.strip_prefix("df://"))
            .unwrap_or(input)
            .trim_end_matches('/');
        let (host, port) = trimmed.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| invalid("the port is not a number between 0 and 65535"))?;
        Ok(Self::new(host, port))
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port() {
        let hp: HostPort = "127.0.0.1:0".parse().expect("valid");
        assert_eq!(hp, HostPort::new("127.0.0.1", 0));
        let hp: HostPort = "http://sched:50050/".parse().expect("valid");
        assert_eq!(hp.to_string(), "sched:50050");
        let hp: HostPort = "[::1]:9".parse().expect("valid");
        assert_eq!(hp.to_string(), "[::1]:9");
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in ["localhost", ":80", "host:99999", "host:x"] {
            let err = bad.parse::<HostPort>().expect_err(bad);
            assert!(err.to_string().contains("expected HOST:PORT"), "{err}");
        }
    }
}
