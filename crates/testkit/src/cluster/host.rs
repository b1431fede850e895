//! A test host: a network namespace with an address of its own, for a program the API
//! server must call (an aggregated API server, an admission webhook). kube-apiserver will
//! not call a loopback endpoint, and a pod's address is what Endpoints publish, so the
//! program runs at the namespace's address, as a pod would at its pod IP.
//!
//! `ip netns add`, a veth pair with a private /24 (the host side `.1`, the namespace side
//! `.2`), and a [`TcpRelay`] on the host side to the API server on 127.0.0.1: the program
//! reaches the API server at `https://<host side>:<relay port>`. Removed when dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::relay::TcpRelay;

/// Namespaces of this test process start with this (the control plane's watchdog removes
/// any left behind).
pub fn namespace_prefix() -> String {
    format!("skylift-{}-", std::process::id())
}

pub struct TestHost {
    /// The network namespace's name.
    pub name: String,
    /// The host side of the veth pair: what the program reaches the host at.
    pub host_ip: Ipv4Addr,
    /// The namespace side: the program's address ("pod IP").
    pub ip: Ipv4Addr,
    /// The relay to the API server, at `host_ip`.
    pub relay: TcpRelay,
    host_link: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (iproute2 is needed)", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn link_exists(name: &str) -> bool {
    ip(&["link", "show", name]).is_ok()
}

impl TestHost {
    /// A new namespace whose programs reach the API server at `api_server` through a relay.
    pub fn new(api_server: SocketAddr) -> TestHost {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        // A /24 per host in 10.231.0.0/16; links are named after it, so a taken one (another
        // test process's) is seen and skipped.
        let start = std::process::id().wrapping_mul(7);
        let subnet = (0..250)
            .map(|_| {
                let n = COUNT.fetch_add(1, Ordering::Relaxed);
                (start.wrapping_add(n) % 250 + 1) as u8
            })
            .find(|subnet| !link_exists(&format!("skyh{subnet}")))
            .expect("a free test subnet in 10.231.0.0/16");
        let name = format!("{}{subnet}", namespace_prefix());
        let host_link = format!("skyh{subnet}");
        let inner_link = format!("skyn{subnet}");
        let host_ip = Ipv4Addr::new(10, 231, subnet, 1);
        let ns_ip = Ipv4Addr::new(10, 231, subnet, 2);
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &name])?;
            ip(&[
                "link",
                "add",
                &host_link,
                "type",
                "veth",
                "peer",
                "name",
                &inner_link,
            ])?;
            ip(&["link", "set", &inner_link, "netns", &name])?;
            ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_link])?;
            ip(&["link", "set", &host_link, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{ns_ip}/24"), "dev", &inner_link])?;
            inside(&["link", "set", &inner_link, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            inside(&["route", "add", "default", "via", &host_ip.to_string()])?;
            Ok(())
        };
        if let Err(err) = setup() {
            let _ = ip(&["netns", "del", &name]);
            let _ = ip(&["link", "del", &host_link]);
            panic!("making a test host (needs root and iproute2): {err}");
        }
        let relay = TcpRelay::start(SocketAddr::new(IpAddr::V4(host_ip), 0), api_server);
        TestHost {
            name,
            host_ip,
            ip: ns_ip,
            relay,
            host_link,
        }
    }

    /// Another address on the host side of the pair, for a program on this machine that
    /// stands for a pod (an OAP node, a proxy): reachable from the host and from the
    /// namespace, and not loopback.
    pub fn add_host_address(&self) -> Ipv4Addr {
        static NEXT: AtomicU32 = AtomicU32::new(10);
        let last = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(last < 250, "out of test host addresses");
        let [a, b, c, _] = self.host_ip.octets();
        let address = Ipv4Addr::new(a, b, c, last as u8);
        ip(&[
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            &self.host_link,
        ])
        .unwrap_or_else(|e| panic!("adding {address}: {e}"));
        address
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Where the program reaches the API server.
    pub fn api_server(&self) -> String {
        format!("https://{}", self.relay.address)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so both.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}
