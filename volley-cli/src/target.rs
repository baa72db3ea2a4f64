//! `udp://HOST:PORT` targets of `proxy --listen` and `serve --forward`, and `HOST:PORT` pool
//! entries: names are resolved when the command starts (every address of a name is used).

use std::net::SocketAddr;

use anyhow::{Context, bail};

/// A proxy endpoint: only UDP for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `udp://HOST:PORT`.
    Udp(String),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once("://") {
            Some(("udp", rest)) if !rest.is_empty() => Ok(Self::Udp(rest.to_string())),
            Some((scheme, _)) => Err(format!(
                "`{scheme}://` is not a proxy scheme volley has; use udp://HOST:PORT"
            )),
            None => Err(format!("`{s}` has no scheme; write udp://{s}")),
        }
    }
}

/// Every address `host_port` (`IP:PORT` or `HOST:PORT`) names.
pub async fn resolve(host_port: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("cannot resolve {host_port}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{host_port} names no address");
    }
    Ok(addrs)
}

/// The first address `host_port` names.
pub async fn resolve_one(host_port: &str) -> anyhow::Result<SocketAddr> {
    Ok(resolve(host_port).await?[0])
}
