//! [`Settings::from_config`]: the one place where ss-server's checked [`Config`] becomes the
//! [`Settings`] of one server entry.
//!
//! Every config key ss-server acts on is read here (the entry's host, port and `plugin` say where
//! `main` listens, and `mode` what it binds; `main` loads the `acl` file into [`Settings::acl`]). Keys only ss-local acts on (`local_address`,
//! `local_port`) are left for it: one config file serves both binaries.

use ss_config::{Config, ReplaySnapshot, ServerEntry};

use crate::{admission, replay_snapshot, Settings, TargetPolicy};

impl Settings {
    /// The settings of `entry`, one of `config`'s servers, with its limits fitted to `descriptors` open
    /// files shared by all of `config`'s servers.
    pub fn from_config(config: &Config, entry: &ServerEntry, descriptors: u64) -> Settings {
        Settings::from_config_in(config, entry, descriptors, |name| std::env::var_os(name))
    }

    /// [`Settings::from_config`] with the environment (for the replay snapshot's default place) given.
    fn from_config_in(
        config: &Config,
        entry: &ServerEntry,
        descriptors: u64,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Settings {
        if !entry.identity_keys.is_empty() {
            tracing::warn!(
                "{}:{}: the password is an iPSK:uPSK chain, a client setting; the server uses its last key \
                 (for many users, set the iPSK as password and list the users in \"users\")",
                entry.host,
                entry.port
            );
        }
        let mut settings = Settings::new(entry.method, entry.key.clone());
        settings.users = entry
            .users
            .as_ref()
            .map(|list| std::sync::Arc::new(crate::users::Users::new(entry.method, &list.users)));
        if config.metrics.is_some() && settings.users.is_none() {
            // Metrics count a single-key server's bytes as one user's, named after the entry.
            let name = match entry.host.contains(':') {
                true => format!("[{}]:{}", entry.host, entry.port),
                false => format!("{}:{}", entry.host, entry.port),
            };
            settings.count_as(name);
        }
        if config.mode.tcp() && entry.plugin.as_ref().is_some_and(|plugin| plugin.mode.tcp()) {
            // Every connection comes from the plugin on loopback: the clients' addresses are unknown.
            settings.max_handshakes_per_source = admission::NO_PER_SOURCE_RULE;
        }
        settings.policy =
            if config.allow_private_targets { TargetPolicy::AllowAll } else { TargetPolicy::PublicOnly };
        settings.handshake_timeout = config.handshake_timeout;
        settings.connect_timeout = config.connect_timeout;
        settings.idle_timeout = config.timeout;
        settings.socket = ss_net::SocketOptions {
            fast_open: config.fast_open,
            reuse_port: config.reuse_port,
            mptcp: config.mptcp,
            no_delay: config.no_delay,
            keep_alive: config.keep_alive,
        };
        settings.threads = config.threads_or_cpus();
        settings.udp_timeout = config.udp_timeout;
        settings.resolve.nameservers = config.nameserver.clone();
        settings.resolve.ipv6_first = config.ipv6_first;
        let (max_connections, max_udp) = ss_net::process::fit_to_descriptors(
            descriptors,
            config.servers.len(),
            config.max_connections,
            if config.mode.udp() { settings.max_udp_associations } else { 0 },
        );
        tracing::info!(
            nofile = descriptors,
            max_connections,
            max_udp_associations = max_udp,
            "{}:{}: limits fitted to the open-file limit",
            entry.host,
            entry.port
        );
        settings.max_connections = max_connections;
        settings.max_udp_associations = max_udp.max(1);
        settings.replay_snapshot = match &config.replay_snapshot {
            ReplaySnapshot::Off => None,
            ReplaySnapshot::At(path) => Some(path.clone()),
            ReplaySnapshot::Default => {
                let path = replay_snapshot::default_path(entry.port, env);
                if path.is_none() && !entry.method.is_2022() {
                    tracing::warn!(
                        "no state directory (STATE_DIRECTORY, XDG_STATE_HOME, HOME) for the replay filter: \
                         it is kept in memory only; set replay_snapshot to keep it across restarts"
                    );
                }
                path
            }
        };
        settings
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use ss_config::{CliArgs, RawConfig};
    use ss_crypto::{Key, Method};

    use super::*;

    const PASSWORD: &str = "a long and varied password 1234";

    fn config(json: &str) -> Config {
        let raw = RawConfig::from_json(json, Path::new("config.json")).unwrap();
        Config::from_raw(raw, &CliArgs::default()).unwrap()
    }

    fn no_env(_: &str) -> Option<std::ffi::OsString> {
        None
    }

    #[test]
    fn every_key_ss_server_uses_reaches_its_settings() {
        let config = config(&format!(
            r#"{{"server":["::","0.0.0.0"],"server_port":8388,"password":"{PASSWORD}","method":"aes-256-gcm",
                "mode":"tcp_and_udp","timeout":31,"udp_timeout":35,"handshake_timeout":32,"connect_timeout":33,
                "max_connections":34,"threads":3,"no_delay":false,"ipv6_first":true,"allow_private_targets":true,
                "nameserver":"127.0.0.1:5353","replay_snapshot":"/var/lib/ss/replay","nofile":4096,
                "plugin":"obfs-server","plugin_opts":"obfs=tls"}}"#
        ));
        let settings = Settings::from_config_in(&config, &config.servers[1], 1 << 20, no_env);
        assert_eq!(settings.method, Method::Aes256Gcm);
        assert_eq!(settings.key, Key::from_password(Method::Aes256Gcm, PASSWORD).unwrap());
        assert_eq!(settings.policy, TargetPolicy::AllowAll);
        assert_eq!(
            (
                settings.idle_timeout,
                settings.handshake_timeout,
                settings.connect_timeout,
                settings.udp_timeout
            ),
            (
                Duration::from_secs(31),
                Duration::from_secs(32),
                Duration::from_secs(33),
                Duration::from_secs(35)
            )
        );
        assert_eq!((settings.max_connections, settings.threads), (34, 3));
        assert!(!settings.socket.no_delay, "\"no_delay\": false turns TCP_NODELAY off");
        assert!(settings.resolve.ipv6_first);
        assert_eq!(settings.resolve.nameservers, ["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]);
        assert_eq!(settings.replay_snapshot, Some(PathBuf::from("/var/lib/ss/replay")));
        assert_eq!(settings.max_handshakes_per_source, admission::NO_PER_SOURCE_RULE, "behind a TCP plugin");
    }

    #[test]
    fn with_metrics_a_single_key_entry_counts_as_a_user_named_after_it() {
        let base = format!(
            r#""server":["::1","127.0.0.1"],"server_port":8388,"password":"{PASSWORD}","method":"aes-256-gcm""#
        );
        let off = config(&format!("{{{base}}}"));
        assert!(
            Settings::from_config_in(&off, &off.servers[0], 1024, no_env).owner.is_none(),
            "nothing counted"
        );
        let on = config(&format!(r#"{{{base},"metrics":"127.0.0.1:9100"}}"#));
        let owner = Settings::from_config_in(&on, &on.servers[1], 1024, no_env).owner;
        assert_eq!(owner.as_ref().map(|owner| owner.name()), Some("127.0.0.1:8388"));
        let owner = Settings::from_config_in(&on, &on.servers[0], 1024, no_env).owner;
        assert_eq!(owner.as_ref().map(|owner| owner.name()), Some("[::1]:8388"));
        let users = config(&format!(
            r#"{{"server":"::1","server_port":8388,"method":"aes-256-gcm","metrics":"127.0.0.1:9100",
                "users":[{{"name":"ann","password":"{PASSWORD} ann"}}]}}"#
        ));
        let settings = Settings::from_config_in(&users, &users.servers[0], 1024, no_env);
        assert!(settings.owner.is_none() && settings.users.is_some(), "users count themselves");
    }

    #[test]
    fn defaults_and_the_descriptor_limit_shared_by_the_servers() {
        let config = config(&format!(
            r#"{{"server":["::","0.0.0.0"],"server_port":8388,"password":"{PASSWORD}","method":"aes-256-gcm",
                "mode":"tcp_and_udp"}}"#
        ));
        let settings = Settings::from_config_in(&config, &config.servers[0], 1024, no_env);
        assert!(settings.socket.no_delay, "TCP_NODELAY is on by default");
        assert!(!settings.resolve.ipv6_first && settings.resolve.nameservers.is_empty());
        assert_eq!(settings.policy, TargetPolicy::PublicOnly);
        assert_eq!(settings.max_handshakes_per_source, admission::DEFAULT_PER_SOURCE);
        let (tcp, udp) = ss_net::process::fit_to_descriptors(1024, 2, 10_000, 4096);
        assert_eq!((settings.max_connections, settings.max_udp_associations), (tcp, udp));
        // No state directory: a classic method's replay filter stays in memory; with one, it is saved.
        assert_eq!(settings.replay_snapshot, None);
        let home = |name: &str| (name == "HOME").then(|| "/home/ss".into());
        let settings = Settings::from_config_in(&config, &config.servers[0], 1024, home);
        assert!(settings.replay_snapshot.is_some_and(|path| path.starts_with("/home/ss")));
    }
}
