//! `volley pubkey KEYFILE`: the public key of a server's or a client's key file.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A secret key file written by `volley keygen`: a server's (pin its public key with
    /// --server-key) or a client's (list its public key in the servers' --allow file). A file
    /// that holds a public key already (one key, readable by others, as `volley pubkey`'s output
    /// saved would be; a secret key file is mode 0600) is printed back as it is, with a note.
    key: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(public) = public_key_file(&args.key) {
        eprintln!(
            "volley pubkey: {} holds a public key already (a secret key file from `volley \
             keygen` is mode 0600); printing it back",
            args.key.display()
        );
        say!("{public}");
        return Ok(());
    }
    let key = crate::keygen::read_key(&args.key)?;
    say!("{}", key.public().to_hex());
    Ok(())
}

/// The public key `path` holds, when it looks like a saved public key rather than a secret one:
/// one key in hex, in a file its group or others may read (which `read_key` would refuse as a
/// secret key anyway).
fn public_key_file(path: &std::path::Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        if mode & 0o077 == 0 {
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    let key = volley::PublicKey::from_hex(text.trim()).ok()?;
    Some(key.to_hex())
}
