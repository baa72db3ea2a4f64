//! `volley keygen --out FILE`: a server's key, or a client's (the same format), and reading
//! key files back — private ones only.
//!
//! A key file is the secret key's 64 hex digits on a line of their own, after the line
//! [`SECRET_KEY_LINE`] that names it a secret key. That line is what tells a secret key file
//! from a saved public key (`volley pubkey … > FILE`), which is also 64 hex digits: files an
//! older keygen wrote have the digits alone, and are still read, as secret keys (they were),
//! but `volley pubkey` says that it cannot tell them from a public key.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use volley::StaticKeypair;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the secret key (64 hex digits after a line `# volley secret key …`): a server's (`serve --key`) or a client's (`connect
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
    writeln!(file, "{SECRET_KEY_LINE}")?;
    writeln!(file, "{}", key.private_hex())?;
    say!("{}", key.public().to_hex());
    Ok(())
}

/// The first line of every key file `keygen` writes: it says what the 64 hex digits under it
/// are, and every reader of key files looks for it.
pub const SECRET_KEY_LINE: &str = "# volley secret key: keep it to its owner (mode 0600); `volley pubkey FILE` prints its public key";

/// What a key file says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// It has the [`SECRET_KEY_LINE`]: a secret key, as keygen writes it.
    Secret,
    /// 64 hex digits alone: an older keygen's secret key, or a public key saved to a file.
    Unmarked,
}

/// Reads a secret key file written by `keygen` (a server's or a client's).
///
/// A file that its group or others may read or write is refused, as ssh refuses such a private
/// key: whoever reads it can pose as this server or client (and past a client's allow-list),
/// whoever writes it can swap in a key of their own. A warning would scroll by in a log while
/// the key stays exposed; an error is fixed once, with the chmod it names.
pub fn read_key(path: &std::path::Path) -> anyhow::Result<StaticKeypair> {
    Ok(read_key_file(path)?.0)
}

/// [`read_key`], and whether the file says it holds a secret key.
pub fn read_key_file(path: &std::path::Path) -> anyhow::Result<(StaticKeypair, Marked)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let parsed = parse(&text);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?
            .permissions()
            .mode();
        let public_hint = if matches!(parsed, Some((_, Marked::Unmarked))) {
            // 64 hex digits alone, open to others: perhaps a public key saved to a file.
            " (if the file holds a public key, from `volley pubkey`, it is that key already: \
             use its content)"
        } else {
            ""
        };
        anyhow::ensure!(
            mode & 0o077 == 0,
            "key file {} is open to its group or others (mode {:04o}): a secret key must be \
             readable by its owner only; run `chmod 600 {}`{public_hint}",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    parsed.ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a volley key file: expected one line of 64 hex digits, a secret key \
             written by `volley keygen` (after its `# volley secret key` line)",
            path.display()
        )
    })
}

/// A key file's key: `#` lines and blank lines around one line of 64 hex digits.
fn parse(text: &str) -> Option<(StaticKeypair, Marked)> {
    let mut marked = Marked::Unmarked;
    let mut hex = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("# volley secret key") {
            marked = Marked::Secret;
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else if hex.replace(line).is_some() {
            return None;
        }
    }
    let key = StaticKeypair::from_private_hex(hex?).ok()?;
    Some((key, marked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o7_key_files_read_with_or_without_the_secret_key_line_and_nothing_else() {
        let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
        let hex = key.private_hex();
        let new = format!("{SECRET_KEY_LINE}\n{hex}\n");
        let (read, marked) = parse(&new).unwrap();
        assert_eq!((read.public(), marked), (key.public(), Marked::Secret));
        let (read, marked) = parse(&format!("{hex}\n")).unwrap();
        assert_eq!((read.public(), marked), (key.public(), Marked::Unmarked));
        assert!(parse(&format!("{hex}\n{hex}\n")).is_none(), "two keys");
        assert!(parse(SECRET_KEY_LINE).is_none(), "no key");
        assert!(parse(&format!("{SECRET_KEY_LINE}\n{}\n", &hex[..62])).is_none());
    }
}
