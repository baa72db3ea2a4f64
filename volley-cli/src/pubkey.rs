//! `volley pubkey KEYFILE`

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A secret key file written by `volley keygen`.
    key: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let key = crate::keygen::read_key(&args.key)?;
    say!("{}", key.public().to_hex());
    Ok(())
}
