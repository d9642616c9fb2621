//! [`Settings::from_config`]: the one place where ss-local's checked [`Config`] becomes [`Settings`].
//!
//! Every config key ss-local acts on is read here (the listeners, [`Config::locals`], are bound by
//! `main` with [`crate::Listener::bind`], each server's `plugin` is started by `main`, which then sets
//! [`Server::plugin`], and `main` loads the `acl` file into [`Settings::acl`]). `nameserver` and
//! `ipv6_first` also say how names of targets the ACL bypasses are resolved here; `udp_timeout` ends the
//! UDP associations of tunnels and redir. Keys only ss-server acts on (`allow_private_targets`,
//! `replay_snapshot`) are left for it: one config file serves both binaries. The socket keys
//! (`fast_open`, `reuse_port`, `mptcp`, `no_delay`, `keep_alive`) become [`Settings::socket`]; the
//! `balancer` object and each server's weights become [`Settings::balancer`] and [`Server::tcp_weight`]
//! / [`Server::udp_weight`].

use ss_config::{Config, Mode, ServerEntry};
use ss_net::plugin::Spec;

use crate::{Server, Settings};

impl Settings {
    /// ss-local's settings for `config`, with the connection cap fitted to `descriptors` open files.
    /// Servers come without their plugins.
    pub fn from_config(config: &Config, descriptors: u64) -> Settings {
        let servers = config
            .servers
            .iter()
            .map(|entry| Server {
                ipv6_first: config.ipv6_first,
                identity_keys: entry.identity_keys.clone(),
                tcp_weight: entry.weights.tcp,
                udp_weight: entry.weights.udp,
                ..Server::new(entry.host.clone(), entry.port, entry.method, entry.key.clone())
            })
            .collect();
        // A SOCKS5 connection holds two descriptors, as on the server; a UDP association three (its
        // control connection, the relay socket and the upstream socket): the UDP share covers the third.
        let udp_share = if config.mode.udp() { usize::MAX } else { 0 };
        let (max_connections, _) =
            ss_net::process::fit_to_descriptors(descriptors, 1, config.max_connections, udp_share);
        tracing::info!(nofile = descriptors, max_connections, "limits fitted to the open-file limit");
        let resolve = ss_net::ResolveSettings {
            nameservers: config.nameserver.clone(),
            ipv6_first: config.ipv6_first,
            ..ss_net::ResolveSettings::default()
        };
        Settings {
            balancer: std::sync::Arc::new(crate::balance::Balancer::new(policy(&config.balance))),
            resolve,
            handshake_timeout: config.handshake_timeout,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.timeout,
            udp_timeout: config.udp_timeout,
            max_connections,
            socket: ss_net::SocketOptions {
                fast_open: config.fast_open,
                reuse_port: config.reuse_port,
                mptcp: config.mptcp,
                no_delay: config.no_delay,
                keep_alive: config.keep_alive,
            },
            tcp: config.mode.tcp(),
            udp: config.mode.udp(),
            threads: config.threads_or_cpus(),
            ..Settings::new(servers)
        }
    }
}

/// The plugin to start for `entry`, if it has one that carries any traffic relayed in `mode`, and
/// whether it carries TCP and UDP (`plugin_mode`, within `mode`); what it does not carry goes to the
/// server directly.
pub fn plugin_spec(mode: Mode, entry: &ServerEntry) -> Option<(Spec, bool, bool)> {
    let plugin = entry.plugin.as_ref()?;
    let tcp = plugin.mode.tcp() && mode.tcp();
    let udp = plugin.mode.udp() && mode.udp();
    if !tcp && !udp {
        tracing::warn!(plugin = %plugin.command, "plugin_mode {} carries nothing in mode {}; not started", plugin.mode.name(), mode.name());
        return None;
    }
    let spec = Spec {
        command: plugin.command.clone(),
        options: plugin.options.clone(),
        args: plugin.args.clone(),
        tcp,
        udp,
    };
    Some((spec, tcp, udp))
}

/// The balancer's policy for the `balancer` object: the defaults where it says nothing.
fn policy(balance: &ss_config::Balance) -> crate::balance::Policy {
    let defaults = crate::balance::Policy::default();
    crate::balance::Policy {
        strategy: balance.strategy,
        check_target: match &balance.check_target {
            Some((host, port)) => crate::listen::forward_address(host, *port),
            None => defaults.check_target.clone(),
        },
        tolerance: balance.tolerance.unwrap_or(defaults.tolerance),
        tolerance_ratio: balance.tolerance_ratio.unwrap_or(defaults.tolerance_ratio),
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use ss_config::{CliArgs, RawConfig};
    use ss_crypto::{Key, Method};

    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODw==";

    fn config(json: &str) -> Config {
        let raw = RawConfig::from_json(json, Path::new("config.json")).unwrap();
        Config::from_raw(raw, &CliArgs::default()).unwrap()
    }

    #[test]
    fn every_key_ss_local_uses_reaches_its_settings() {
        let config = config(&format!(
            r#"{{"server":["a.example","[2001:db8::1]:9000"],"server_port":8388,"key":"{KEY}",
                "method":"2022-blake3-aes-128-gcm","local_address":"::1","local_port":1080,"mode":"tcp_and_udp",
                "timeout":31,"udp_timeout":35,"handshake_timeout":32,"connect_timeout":33,"max_connections":34,"threads":3,
                "no_delay":false,"ipv6_first":true,"nofile":4096,"nameserver":"127.0.0.1:5353"}}"#
        ));
        let settings = Settings::from_config(&config, 1 << 20);
        let servers: Vec<_> =
            settings.servers.iter().map(|s| (s.host.as_str(), s.port, s.method, s.ipv6_first)).collect();
        let method = Method::Blake3Aes128Gcm;
        assert_eq!(servers, [("a.example", 8388, method, true), ("2001:db8::1", 9000, method, true)]);
        assert_eq!(settings.servers[1].key, Key::from_base64(method, KEY).unwrap());
        assert!(settings.servers.iter().all(|server| server.plugin.is_none()));
        assert_eq!(
            (settings.idle_timeout, settings.handshake_timeout, settings.connect_timeout),
            (Duration::from_secs(31), Duration::from_secs(32), Duration::from_secs(33))
        );
        assert_eq!((settings.max_connections, settings.threads), (34, 3));
        assert_eq!(settings.udp_timeout, Duration::from_secs(35), "tunnels' and redir's UDP associations");
        assert!(!settings.socket.no_delay, "\"no_delay\": false turns TCP_NODELAY off");
        assert!(settings.tcp && settings.udp);
        let nameserver: std::net::SocketAddr = "127.0.0.1:5353".parse().unwrap();
        assert_eq!((settings.resolve.nameservers, settings.resolve.ipv6_first), (vec![nameserver], true));
        assert!(settings.acl.is_none(), "main loads the ACL file");
    }

    #[test]
    fn the_balancer_and_weights_reach_the_settings() {
        let config = config(&format!(
            r#"{{"method":"2022-blake3-aes-128-gcm","key":"{KEY}","server_port":1,
                "balancer":{{"strategy":"round-robin","check_target":"127.0.0.1:7","tolerance_ms":80}},
                "servers":[{{"server":"a","weight":2}},{{"server":"b","tcp_weight":3,"udp_weight":0.5}}]}}"#
        ));
        let settings = Settings::from_config(&config, 1 << 20);
        let weights: Vec<_> = settings.servers.iter().map(|s| (s.tcp_weight, s.udp_weight)).collect();
        assert_eq!(weights, [(2.0, 2.0), (3.0, 0.5)]);
        let policy = settings.balancer.policy();
        assert_eq!(policy.strategy, ss_config::Strategy::RoundRobin);
        assert_eq!(policy.check_target, ss_crypto::Address::Ip("127.0.0.1:7".parse().unwrap()));
        assert_eq!((policy.tolerance, policy.tolerance_ratio), (Duration::from_millis(80), 0.2));
    }

    #[test]
    fn defaults_and_the_descriptor_limit() {
        let config = config(&format!(
            r#"{{"server":"s","server_port":1,"key":"{KEY}","method":"2022-blake3-aes-128-gcm","mode":"udp_only"}}"#
        ));
        let settings = Settings::from_config(&config, 1024);
        assert!(settings.socket.no_delay, "TCP_NODELAY is on by default");
        assert!(!settings.servers[0].ipv6_first);
        assert!(!settings.tcp && settings.udp);
        // 1024 descriptors, less the reserve, shared with UDP: far fewer than the default 10000.
        assert_eq!(
            settings.max_connections,
            ss_net::process::fit_to_descriptors(1024, 1, 10_000, usize::MAX).0
        );
        assert!(settings.max_connections < 500);
    }
}
