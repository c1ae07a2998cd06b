//! `SO_ORIGINAL_DST` answers as the kernel writes them. Invariant: the
//! address and port read back are the ones the fields hold in network
//! byte order, taken byte by byte (a model independent of the
//! conversion's integer swaps), for any field values.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use nix::libc;
use weft_proxy::orig_dst::{from_sockaddr_in, from_sockaddr_in6};

fuzz_target!(|input: ([u8; 4], [u8; 2], [u8; 16], u32, u32)| {
    let (v4, port, v6, flowinfo, scope) = input;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: u16::from_ne_bytes(port),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4),
        },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(got) = from_sockaddr_in(&sin) else {
        panic!("an IPv4 answer read as IPv6");
    };
    assert_eq!(got.ip(), &Ipv4Addr::from(v4));
    assert_eq!(got.port(), u16::from(port[0]) << 8 | u16::from(port[1]));

    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: u16::from_ne_bytes(port),
        sin6_flowinfo: flowinfo,
        sin6_addr: libc::in6_addr { s6_addr: v6 },
        sin6_scope_id: scope,
    };
    let SocketAddr::V6(got) = from_sockaddr_in6(&sin6) else {
        panic!("an IPv6 answer read as IPv4");
    };
    assert_eq!(got.ip(), &Ipv6Addr::from(v6));
    assert_eq!(got.port(), u16::from(port[0]) << 8 | u16::from(port[1]));
    assert_eq!((got.flowinfo(), got.scope_id()), (flowinfo, scope));
});
