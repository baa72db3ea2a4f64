//! `volley keygen --out FILE`: a server's key, or a client's (the same format), and reading
//! key files back — private ones only.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use volley::StaticKeypair;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the secret key (hex): a server's (`serve --key`) or a client's (`connect
    /// --key`, `proxy --key`). Created with mode 0600; an existing file is kept unless --force
    /// is given. The public key is printed: pin a server's with --server-key, list a client's
    /// in the servers' --allow file.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing key file.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if args.force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&args.out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists: keeping it (use --force to overwrite it)",
                args.out.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", args.out.display()))
        }
    })?;
    #[cfg(unix)]
    {
        // `mode` applies only when the file is created; tighten an overwritten one too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    writeln!(file, "{}", key.private_hex())?;
    say!("{}", key.public().to_hex());
    Ok(())
}

/// Reads a secret key file written by `keygen` (a server's or a client's).
///
/// A file that its group or others may read or write is refused, as ssh refuses such a private
/// key: whoever reads it can pose as this server or client (and past a client's allow-list),
/// whoever writes it can swap in a key of their own. A warning would scroll by in a log while
/// the key stays exposed; an error is fixed once, with the chmod it names.
pub fn read_key(path: &std::path::Path) -> anyhow::Result<StaticKeypair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?
            .permissions()
            .mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "key file {} is open to its group or others (mode {:04o}): a secret key must be \
             readable by its owner only; run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    StaticKeypair::from_private_hex(&text).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a volley key file: expected one line of 64 hex digits, a secret key \
             written by `volley keygen`",
            path.display()
        )
    })
}
