//! `udp://HOST:PORT` and `tcp://HOST:PORT` targets of `proxy --listen` and `serve --forward`, and `HOST:PORT` pool
//! entries: names are resolved when the command starts (every address of a name is used).

use std::net::SocketAddr;

use anyhow::{Context, bail, ensure};
use volley::Client;
use volley::PublicKey;
use volley::discovery::{Pool, PoolEntry, Resolver, ZonedEntry};

/// A proxy endpoint: `udp://HOST:PORT` or `tcp://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `udp://HOST:PORT`.
    Udp(String),
    /// `tcp://HOST:PORT`.
    Tcp(String),
}

impl Target {
    /// The `HOST:PORT` part.
    pub fn host_port(&self) -> &str {
        match self {
            Self::Udp(a) | Self::Tcp(a) => a,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once("://") {
            Some(("udp", rest)) if !rest.is_empty() => Ok(Self::Udp(rest.to_string())),
            Some(("tcp", rest)) if !rest.is_empty() => Ok(Self::Tcp(rest.to_string())),
            Some((scheme, _)) => Err(format!(
                "`{scheme}://` is not a proxy scheme volley has; use udp://HOST:PORT or \
                 tcp://HOST:PORT"
            )),
            None => Err(format!("`{s}` has no scheme; write udp://{s} or tcp://{s}")),
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

/// `--server-key` values (64 hex digits each) as keys.
pub fn server_keys(keys: &[String]) -> anyhow::Result<Vec<PublicKey>> {
    keys.iter()
        .map(|k| {
            PublicKey::from_hex(k)
                .with_context(|| format!("--server-key {k:?} is not 64 hex digits"))
        })
        .collect()
}

/// A pool from `IP:PORT`, `HOST:PORT` and `srv:NAME` entries, each optionally `ZONE=ENTRY`:
/// fixed when every entry is an address, else kept current through `dns_server` (or the
/// system's resolver). Literal addresses of both families are refused (a race runs on one
/// socket).
pub async fn pool(entries: &[String], dns_server: Option<SocketAddr>) -> anyhow::Result<Pool> {
    let entries = entries
        .iter()
        .map(|s| s.parse::<ZonedEntry>().map_err(|e| anyhow::anyhow!(e)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let literal: Vec<(SocketAddr, Option<String>)> = entries
        .iter()
        .filter_map(|e| match e.entry {
            PoolEntry::Addr(a) => Some((a, e.zone.clone())),
            _ => None,
        })
        .collect();
    ensure!(
        literal
            .iter()
            .all(|(a, _)| a.is_ipv4() == literal[0].0.is_ipv4()),
        "the pool mixes IPv4 and IPv6 addresses; use one family per command"
    );
    if literal.len() == entries.len() {
        return Ok(Pool::fixed_zoned(literal));
    }
    let resolver = match dns_server {
        Some(server) => Resolver::with_server(server)?,
        None => Resolver::system()?,
    };
    Ok(Pool::resolve_zoned(entries, resolver).await?)
}

/// Gives `client` the zone labels of `pool`'s `ZONE=ENTRY` entries, now and whenever the pool
/// changes (for as long as the pool lives). Nothing to do for a pool without labels.
pub fn keep_zones(client: &Client, pool: &Pool) {
    let zones = pool.zones();
    if zones.is_empty() {
        return;
    }
    client.set_server_zones(zones);
    let client = client.clone();
    let mut pool = pool.clone();
    tokio::spawn(async move {
        loop {
            pool.changed().await;
            client.set_server_zones(pool.zones());
        }
    });
}
