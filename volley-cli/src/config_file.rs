//! Reading TOML config files for `serve`, `connect` and `proxy`: unknown settings are refused (a typo
//! must not pass silently), and every error names the file.

use std::path::Path;

use anyhow::Context;

/// Parses `path` as the settings `T` (a struct with `deny_unknown_fields`).
pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text).with_context(|| format!("config file {}", path.display()))
}

/// The `log_format` a config file sets, if it reads and sets one (read before logging starts;
/// every command's settings accept the key).
pub fn log_format(path: &Path) -> Option<crate::LogFormat> {
    #[derive(serde::Deserialize)]
    struct Logging {
        log_format: Option<crate::LogFormat>,
    }
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<Logging>(&text).ok()?.log_format
}

/// The `log_level` setting of the config file at `path` (an `EnvFilter` directive such as
/// `info` or `warn,volley=debug`), if it has one and can be read.
pub fn log_level(path: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Logging {
        log_level: Option<String>,
    }
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<Logging>(&text).ok()?.log_level
}

/// Parses TOML text as the settings `T`.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    Ok(toml::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: crate::serve::Args,
    }

    #[derive(Parser)]
    struct Connect {
        #[command(flatten)]
        args: crate::connect::Args,
    }

    #[derive(Parser)]
    struct Proxy {
        #[command(flatten)]
        args: crate::proxy::Args,
    }

    fn examples() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
    }

    /// A copy of a shipped example in the layout the README assumes: `ROOT/examples/NAME`, with
    /// the tour's key file at `ROOT/server.key` (the checkout), mode 0600.
    fn staged(name: &str) -> PathBuf {
        // Unit tests have no CARGO_TARGET_TMPDIR: the system's temp dir, one folder per call.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("volley-config-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("examples");
        std::fs::create_dir_all(&dir).unwrap();
        let key = volley::StaticKeypair::generate(&mut volley::OsRng);
        std::fs::write(root.join("server.key"), key.private_hex()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                root.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        std::fs::copy(examples().join(name), dir.join(name)).unwrap();
        dir.join(name)
    }

    fn serve(argv: &[&str]) -> anyhow::Result<crate::serve::Settings> {
        let mut all = vec!["serve"];
        all.extend_from_slice(argv);
        crate::serve::settings(Serve::try_parse_from(all)?.args)
    }

    fn connect(argv: &[&str]) -> anyhow::Result<volley::ClientConfig> {
        let mut all = vec!["connect"];
        all.extend_from_slice(argv);
        Ok(crate::connect::settings(Connect::try_parse_from(all)?.args)?.0)
    }

    #[test]
    fn d4_every_shipped_example_config_parses_and_validates() {
        let mut seen = 0;
        for entry in std::fs::read_dir(examples()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                let staged = staged(&name);
                let staged = staged.to_str().unwrap();
                match name.split('.').next().unwrap() {
                    "serve" => {
                        let s = serve(&["--config", staged]).unwrap();
                        s.config.validate().unwrap();
                    }
                    "connect" => {
                        connect(&["--config", staged]).unwrap().validate().unwrap();
                    }
                    "proxy" => {
                        let args = Proxy::try_parse_from(["proxy", "--config", staged])
                            .unwrap()
                            .args;
                        let (config, args) = crate::proxy::settings(args).unwrap();
                        config.validate().unwrap();
                        // A flag wins over the file.
                        let over = Proxy::try_parse_from([
                            "proxy",
                            "--config",
                            staged,
                            "--service",
                            "dns",
                        ])
                        .unwrap()
                        .args;
                        let (over, _) = crate::proxy::settings(over).unwrap();
                        assert_eq!(over.service, b"dns");
                        assert!(format!("{args:?}").contains("127.0.0.1:5300"));
                    }
                    other => panic!("examples/{name}: no test knows `{other}` configs"),
                }
                seen += 1;
            }
        }
        assert!(
            seen >= 3,
            "examples/ holds the serve, connect and proxy configs"
        );
    }

    /// The settings a command's config file takes, as serde names them when refusing one.
    fn settings_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let err = format!(
            "{:#}",
            super::parse::<T>("zz_no_such_setting = 1").err().unwrap()
        );
        let list = err
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("{err}"))
            .1;
        list.split(',')
            .map(|s| s.trim().trim_matches(|c| c == '`' || c == '\n').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    #[test]
    fn o7_every_example_config_shows_every_setting_its_command_takes() {
        for (name, settings) in [
            ("serve.toml", settings_of::<crate::serve::File>()),
            ("connect.toml", settings_of::<crate::connect::File>()),
            ("proxy.toml", settings_of::<crate::proxy::File>()),
        ] {
            assert!(settings.len() > 10, "{name}: {settings:?}");
            let text = std::fs::read_to_string(examples().join(name)).unwrap();
            for setting in settings {
                // Set, or shown commented out with the text above it; the old `_ms` spellings
                // are named in a comment.
                let shown = text.lines().any(|l| {
                    let l = l.trim_start_matches("# ");
                    l.starts_with(&format!("{setting} = "))
                }) || (setting.ends_with("_ms")
                    && text.contains(&format!("`{setting}`")));
                assert!(shown, "examples/{name} does not show `{setting}`");
            }
        }
    }

    #[test]
    fn z2_proxy_and_connect_take_a_policy_a_fan_out_a_zone_and_labelled_entries() {
        let key = "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c";
        let args = Proxy::try_parse_from([
            "proxy",
            "--listen",
            "udp://127.0.0.1:5300",
            "--server-key",
            key,
            "--policy",
            "path",
            "--fanout",
            "4",
            "--zone",
            "eu-1a",
            "eu-1a=10.0.0.1:7020",
            "eu-1b=srv:_echo._udp.eu-1b.example.com",
            "10.0.0.3:7020",
        ])
        .unwrap()
        .args;
        let (config, _) = crate::proxy::settings(args).unwrap();
        assert_eq!(config.policy, volley::SelectionPolicy::path());
        assert_eq!(config.fanout, Some(4));
        assert_eq!(config.zone.as_deref(), Some("eu-1a"));
        let c = connect(&[
            "--server-key",
            key,
            "--policy",
            "path",
            "--zone",
            "b",
            "b=127.0.0.1:7020",
        ])
        .unwrap();
        assert_eq!(
            (c.policy, c.zone.as_deref()),
            (volley::SelectionPolicy::path(), Some("b"))
        );
        let err = connect(&[
            "--server-key",
            key,
            "--policy",
            "path",
            "--window",
            "3",
            "127.0.0.1:1",
        ])
        .unwrap_err();
        assert!(format!("{err:#}").contains("window"), "{err:#}");
    }

    #[tokio::test]
    async fn z2_zone_labels_of_pool_entries_reach_the_pool() {
        let pool = crate::target::pool(
            &[
                "a=127.0.0.1:7001".into(),
                "b=127.0.0.1:7002".into(),
                "127.0.0.1:7003".into(),
            ],
            None,
        )
        .await
        .unwrap();
        assert_eq!(pool.current().len(), 3);
        let zones = pool.zones();
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[&"127.0.0.1:7002".parse().unwrap()], "b");
        let err = crate::target::pool(&["=127.0.0.1:7001".into()], None)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("zone"), "{err:#}");
    }

    #[test]
    fn a1_client_keys_come_from_a_config_file_relative_to_it_and_a_flag_wins() {
        // `staged` leaves the tour's key file (mode 0600) in the checkout, beside examples/; any
        // key file is a client key.
        let path = staged("connect.toml");
        let dir = path.parent().unwrap();
        let key = crate::keygen::read_key(&dir.join("../server.key")).unwrap();
        let server = "1".repeat(64);
        let with_key = dir.join("with-key.toml");
        std::fs::write(
            &with_key,
            format!(
                "server_keys = [\"{server}\"]\nservers = [\"127.0.0.1:7001\"]\nkey = \"../server.key\"\n"
            ),
        )
        .unwrap();
        let c = connect(&["--config", with_key.to_str().unwrap()]).unwrap();
        assert_eq!(c.key.map(|k| k.public()), Some(key.public()));
        let c = connect(&["--config", path.to_str().unwrap()]).unwrap();
        assert!(c.key.is_none(), "no key: anonymous");

        let other = volley::StaticKeypair::generate(&mut volley::OsRng);
        let other_path = dir.join("other.key");
        std::fs::write(&other_path, other.private_hex()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&other_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let c = connect(&[
            "--config",
            with_key.to_str().unwrap(),
            "--key",
            other_path.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            c.key.map(|k| k.public()),
            Some(other.public()),
            "the flag wins"
        );

        let proxy = dir.join("proxy-key.toml");
        std::fs::write(
            &proxy,
            format!(
                "listen = \"udp://127.0.0.1:5300\"\nserver_keys = [\"{server}\"]\nservers = [\"127.0.0.1:7001\"]\nkey = \"../server.key\"\n"
            ),
        )
        .unwrap();
        let args = Proxy::try_parse_from(["proxy", "--config", proxy.to_str().unwrap()])
            .unwrap()
            .args;
        let (config, _) = crate::proxy::settings(args).unwrap();
        assert_eq!(config.key.map(|k| k.public()), Some(key.public()));

        // A key named in the file but missing is named too.
        std::fs::write(
            &with_key,
            format!(
                "server_keys = [\"{server}\"]\nservers = [\"127.0.0.1:7001\"]\nkey = \"gone.key\"\n"
            ),
        )
        .unwrap();
        let err = connect(&["--config", with_key.to_str().unwrap()]).unwrap_err();
        assert!(format!("{err:#}").contains("gone.key"), "{err:#}");
    }

    #[test]
    fn a1_the_examples_commented_out_client_key_and_allow_list_work_uncommented() {
        let uncomment = |path: &std::path::Path, setting: &str| {
            let text = std::fs::read_to_string(path).unwrap();
            let commented = format!("# {setting} = ");
            assert!(
                text.contains(&commented),
                "{}: no {commented}",
                path.display()
            );
            std::fs::write(path, text.replace(&commented, &format!("{setting} = "))).unwrap();
        };
        let serve_toml = staged("serve.toml");
        uncomment(&serve_toml, "allow");
        let s = serve(&["--config", serve_toml.to_str().unwrap()]).unwrap();
        assert_eq!(s.config.allow.map(|l| l.len()), Some(1));
        // Both at once is refused.
        uncomment(&serve_toml, "allow_file");
        let err = serve(&["--config", serve_toml.to_str().unwrap()]).unwrap_err();
        assert!(format!("{err:#}").contains("keep one"), "{err:#}");

        for name in ["connect.toml", "proxy.toml"] {
            let path = staged(name);
            let dir = path.parent().unwrap();
            // Any key file is a client key: the staged server key stands in.
            std::fs::copy(dir.join("../server.key"), dir.join("client.key")).unwrap();
            uncomment(&path, "key");
            let config = if name == "connect.toml" {
                connect(&["--config", path.to_str().unwrap()]).unwrap()
            } else {
                let args = Proxy::try_parse_from(["proxy", "--config", path.to_str().unwrap()])
                    .unwrap()
                    .args;
                crate::proxy::settings(args).unwrap().0
            };
            let key = crate::keygen::read_key(&dir.join("client.key")).unwrap();
            assert_eq!(config.key.map(|k| k.public()), Some(key.public()), "{name}");
        }
    }

    #[test]
    fn o7_every_timer_takes_one_duration_syntax_and_the_old_ms_spellings_keep_their_unit() {
        let path = staged("serve.toml");
        let dir = path.parent().unwrap();
        let key = dir.join("../server.key");
        let key = key.to_str().unwrap();
        let idle = |s: crate::serve::Settings| s.config.session.idle_timeout;
        let seven = std::time::Duration::from_secs(7);
        let base = ["--listen", "127.0.0.1:1", "--key", key];
        for flags in [
            ["--idle-timeout", "7s"],
            ["--idle-timeout", "7000ms"],
            ["--idle-timeout", "7"],
            ["--idle-timeout-ms", "7000"],
            ["--idle-timeout-ms", "7s"],
        ] {
            let s = serve(&[&base[..], &flags[..]].concat()).unwrap();
            assert_eq!(idle(s), seven, "{flags:?}");
        }
        for (n, line) in [
            "idle_timeout = \"7s\"",
            "idle_timeout = 7",
            "idle_timeout_ms = 7000",
            "idle_timeout_ms = \"7s\"",
        ]
        .into_iter()
        .enumerate()
        {
            let file = dir.join(format!("timer-{n}.toml"));
            std::fs::write(
                &file,
                format!("listen = \"127.0.0.1:1\"\nkey = \"../server.key\"\n{line}\n"),
            )
            .unwrap();
            let s = serve(&["--config", file.to_str().unwrap()]).unwrap();
            assert_eq!(idle(s), seven, "{line}");
        }
        let s = serve(&[&base[..], &["--keepalive", "250ms", "--load-every", "1.5s"]].concat())
            .unwrap();
        assert_eq!(
            s.config.session.keepalive_interval,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(s.load_every, std::time::Duration::from_millis(1500));
        let err = serve(&[&base[..], &["--idle-timeout", "soon"]].concat()).unwrap_err();
        assert!(format!("{err:#}").contains("250ms, 30s"), "{err:#}");
        let err = serve(
            &[
                &base[..],
                &["--idle-timeout", "7s", "--idle-timeout-ms", "7"],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot be used with"),
            "{err:#}"
        );

        let server = "1".repeat(64);
        let window = |flags: &[&str]| {
            let mut all = vec!["--server-key", &server, "--policy", "window"];
            all.extend_from_slice(flags);
            all.push("127.0.0.1:1");
            match connect(&all).unwrap().policy {
                volley::SelectionPolicy::Window { delta, .. } => delta,
                other => panic!("{other:?}"),
            }
        };
        let three = std::time::Duration::from_millis(3);
        assert_eq!(window(&["--window", "3ms"]), three);
        assert_eq!(window(&["--window-ms", "3"]), three);
    }

    #[test]
    fn d4_flags_override_the_file_and_unknown_or_bad_settings_are_named() {
        let path = staged("serve.toml");
        let path = path.to_str().unwrap();
        let s = serve(&["--config", path]).unwrap();
        assert_eq!(s.config.capacity, Some(16));
        assert_eq!(s.listen.to_string(), "127.0.0.1:7001");
        let s = serve(&[
            "--config",
            path,
            "--capacity",
            "4",
            "--listen",
            "127.0.0.1:9",
        ])
        .unwrap();
        assert_eq!(s.config.capacity, Some(4), "the flag wins");
        assert_eq!(s.listen.to_string(), "127.0.0.1:9");
        let err = serve(&["--config", path, "--capacity", "0"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("--capacity must be at least 1"),
            "{err:#}"
        );

        let dir = std::path::Path::new(path).parent().unwrap();
        let typo = dir.join("typo.toml");
        std::fs::write(
            &typo,
            "listen = \"127.0.0.1:1\"\nkey = \"../server.key\"\ncapacty = 4\n",
        )
        .unwrap();
        let err = serve(&["--config", typo.to_str().unwrap()]).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("capacty") && text.contains("typo.toml"),
            "{text}"
        );

        let timers = dir.join("timers.toml");
        std::fs::write(
            &timers,
            "listen = \"127.0.0.1:1\"\nkey = \"../server.key\"\nkeepalive_ms = 5000\nidle_timeout_ms = 1000\n",
        )
        .unwrap();
        let err = serve(&["--config", timers.to_str().unwrap()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("idle timeout must be longer"),
            "{err:#}"
        );

        let cpath = staged("connect.toml");
        let cpath = cpath.to_str().unwrap();
        let c = connect(&["--config", cpath]).unwrap();
        assert_eq!(c.fanout, Some(2));
        assert!(matches!(c.policy, volley::SelectionPolicy::Window { .. }));
        let c = connect(&["--config", cpath, "--n-best", "2"]).unwrap();
        assert!(matches!(
            c.policy,
            volley::SelectionPolicy::NBest { k: 2, .. }
        ));
        let err = connect(&["--config", cpath, "--fanout", "1"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("fan-out of at least 2"),
            "{err:#}"
        );
    }
}

/// A setting that takes one value or a list: `listen = "udp://…"` or
/// `listen = ["udp://…", "tcp://…"]`.
#[derive(serde::Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values given (none when the setting is absent).
    pub(crate) fn list(setting: Option<Self>) -> Vec<String> {
        match setting {
            None => Vec::new(),
            Some(Self::One(v)) => vec![v],
            Some(Self::Many(vs)) => vs,
        }
    }
}
