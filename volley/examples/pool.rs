use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use volley::handler::Call;
use volley::{Bytes, Client, ClientConfig, Pool, PoolConfig, Server, ServerConfig, StaticKeypair};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let mut servers = Vec::new();
    for _ in 0..4 {
        let server = Server::bind("127.0.0.1:0".parse()?, ServerConfig::new(key.clone())).await?;
        servers.push(server.local_addr());
        // Each request is answered (in upper case) by a handler; many run at once per session.
        let upper = |call: Call| async move { Some(Bytes::from(call.data.to_ascii_uppercase())) };
        tokio::spawn(volley::handler::serve(
            server,
            upper,
            std::future::pending(),
        ));
    }

    // Three sessions from one race; every request goes to the member expected to answer first.
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let pool = Pool::connect(&client, &servers, PoolConfig::members(3)).await?;
    let mut service = ServiceBuilder::new()
        .concurrency_limit(256)
        .timeout(Duration::from_secs(1))
        .service(pool);
    let reply = service
        .ready()
        .await?
        .call(Bytes::from_static(b"hello"))
        .await?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}
