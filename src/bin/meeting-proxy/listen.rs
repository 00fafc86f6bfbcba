//! Listening sockets: the agents' port and every public port are opened here, with the
//! kernel's largest accept queue.

use std::net::TcpListener;

/// A listening socket on `addr` (`HOST:PORT`, resolved) with the accept queue
/// [`listen_backlog`].
pub fn bind_listener(addr: &str) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or(std::io::ErrorKind::AddrNotAvailable)?;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(listen_backlog())?;
    Ok(sock.into())
}

/// `net.core.somaxconn` (the kernel caps every backlog there), else 4096.
pub fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n: &i32| *n > 0)
        .unwrap_or(4096)
}
