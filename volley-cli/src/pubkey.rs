//! `volley pubkey KEYFILE`: the public key of a server's or a client's key file.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A secret key file written by `volley keygen`: a server's (pin its public key with
    /// --server-key) or a client's (list its public key in the servers' --allow file).
    key: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let key = crate::keygen::read_key(&args.key)?;
    say!("{}", key.public().to_hex());
    Ok(())
}
