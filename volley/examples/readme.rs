use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let server = Server::bind("127.0.0.1:0".parse()?, ServerConfig::new(key.clone())).await?;
    let pool = vec![server.local_addr() /*, more servers */];
    tokio::spawn(volley::echo::serve(server, std::future::pending()));

    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let session = client.connect(&pool).await?;
    session.send(b"hello").await?;
    let reply = session.recv().await?;
    println!("{}", String::from_utf8_lossy(&reply));
    println!("{:?}", session.report()); // winner, offers with answer times and load hints
    Ok(())
}
