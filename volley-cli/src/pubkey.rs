//! `volley pubkey KEYFILE`: the public key of a server's or a client's key file.

use std::path::PathBuf;

use crate::keygen::Marked;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A secret key file written by `volley keygen`: a server's (pin its public key with
    /// --server-key) or a client's (list its public key in the servers' --allow file). A file
    /// of 64 hex digits alone (an older keygen's) is read as a secret key too, with a warning:
    /// a public key saved to a file looks the same.
    key: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (key, marked) = crate::keygen::read_key_file(&args.key)?;
    if marked == Marked::Unmarked {
        // The digits may be a public key: its "public key" would be an unrelated one. Say so,
        // in the log on stderr (stdout keeps the one line scripts capture).
        tracing::warn!(
            "{} has no `# volley secret key` line: read as a secret key written by an older \
             `volley keygen`, whose public key is printed. If the file holds a public key (from \
             `volley pubkey`), the printed key is NOT it: the file's own 64 digits are. \
             Rewrite a secret key with `volley keygen --out FILE --force` (a new key), or put \
             the line `# volley secret key` above its digits",
            args.key.display()
        );
    }
    say!("{}", key.public().to_hex());
    Ok(())
}
