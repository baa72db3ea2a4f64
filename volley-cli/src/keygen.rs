//! `volley keygen --out FILE`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use volley::StaticKeypair;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the secret key (hex). Created with mode 0600; an existing file is kept
    /// unless --force is given.
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

/// Reads a key file written by `keygen`.
pub fn read_key(path: &std::path::Path) -> anyhow::Result<StaticKeypair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "key file is readable by others (mode {:o}); chmod 600 it", mode & 0o777);
        }
    }
    StaticKeypair::from_private_hex(&text)
        .with_context(|| format!("{} is not a volley key file", path.display()))
}
