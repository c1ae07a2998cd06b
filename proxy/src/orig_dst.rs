//! The original destination of a redirected connection.
//!
//! The pod's NAT redirect rules rewrite the destination to the proxy's port;
//! conntrack remembers where the client meant to go, and `SO_ORIGINAL_DST`
//! (`IP6T_SO_ORIGINAL_DST` for IPv6) reads it back.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::libc;
use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// Reads the pre-NAT destination of an accepted connection.
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    match stream.local_addr()? {
        SocketAddr::V4(_) => Ok(from_sockaddr_in(&getsockopt(stream, sockopt::OriginalDst)?)),
        SocketAddr::V6(_) => Ok(from_sockaddr_in6(&getsockopt(
            stream,
            sockopt::Ip6tOriginalDst,
        )?)),
    }
}

/// The kernel's answer for IPv4: address and port in network byte order.
pub fn from_sockaddr_in(addr: &libc::sockaddr_in) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// The kernel's answer for IPv6: the address as bytes, the port in
/// network byte order.
pub fn from_sockaddr_in6(addr: &libc::sockaddr_in6) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from(addr.sin6_addr.s6_addr),
        u16::from_be(addr.sin6_port),
        addr.sin6_flowinfo,
        addr.sin6_scope_id,
    ))
}
