//! The monitor host's network counters, as the original's ethtool script
//! read them: packets and bytes per second for one interface.
//!
//! Owns: reading `/proc/net/dev`, and finding the interface that carries
//! the traffic to a source (the one holding the local address the kernel
//! would use to reach it). Must not: guess: an interface that cannot be
//! read gives no sample, and the row says so (`net: null`).

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};

/// Cumulative counters of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Header lines at the top of `/proc/net/dev`, before the interfaces.
const PROC_NET_DEV_HEADER_LINES: usize = 2;
/// Columns of an interface's line in `/proc/net/dev`, after its name:
/// receive bytes packets errs drop fifo frame compressed multicast, then
/// transmit bytes packets ...
const RX_BYTES: usize = 0;
const RX_PACKETS: usize = 1;
const TX_BYTES: usize = 8;
const TX_PACKETS: usize = 9;

/// Finds `iface` in the text of `/proc/net/dev`.
pub fn parse_proc_net_dev(text: &str, iface: &str) -> Option<IfaceCounters> {
    text.lines()
        .skip(PROC_NET_DEV_HEADER_LINES)
        .find_map(|line| {
            let (name, rest) = line.split_once(':')?;
            if name.trim() != iface {
                return None;
            }
            let f: Vec<u64> = rest
                .split_ascii_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (f.len() > TX_PACKETS).then(|| IfaceCounters {
                rx_bytes: f[RX_BYTES],
                rx_packets: f[RX_PACKETS],
                tx_bytes: f[TX_BYTES],
                tx_packets: f[TX_PACKETS],
            })
        })
}

/// Reads `iface`'s counters now.
pub fn read(iface: &str) -> Option<IfaceCounters> {
    let text = std::fs::read_to_string("/proc/net/dev").ok()?;
    parse_proc_net_dev(&text, iface)
}

/// The interface whose address the kernel picks to reach `addr`
/// (`host:port`): a UDP socket "connected" there sends nothing but learns
/// its local address, which one interface holds.
pub fn iface_towards(addr: &str) -> Option<String> {
    let target = addr.to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    let local = socket.local_addr().ok()?.ip();
    if local.is_loopback() {
        return Some("lo".into());
    }
    iface_holding(local)
}

/// The interface holding `ip`, from getifaddrs(3).
fn iface_holding(ip: IpAddr) -> Option<String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, not yet freed.
        let node = unsafe { &*at };
        at = node.ifa_next;
        if node.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose
        // family says which struct it is.
        let family = i32::from(unsafe { (*node.ifa_addr).sa_family });
        let addr = match family {
            libc::AF_INET => {
                // SAFETY: the family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                // SAFETY: the family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(sin6.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        if addr == ip {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(node.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev_is_read_by_column() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo: 1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0\n  \
             eth0: 5 6 0 0 0 0 0 0 7 8 0 0 0 0 0 0\n";
        assert_eq!(
            parse_proc_net_dev(text, "eth0"),
            Some(IfaceCounters {
                rx_bytes: 5,
                rx_packets: 6,
                tx_bytes: 7,
                tx_packets: 8
            })
        );
        assert_eq!(
            parse_proc_net_dev(text, "lo").map(|c| c.tx_packets),
            Some(20)
        );
        assert_eq!(parse_proc_net_dev(text, "wlan0"), None);
    }

    #[test]
    fn loopback_traffic_goes_through_lo() {
        assert_eq!(iface_towards("127.0.0.1:9").as_deref(), Some("lo"));
        assert!(read("lo").is_some(), "every Linux host has lo");
    }
}
