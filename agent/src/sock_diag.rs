//! Established TCP sockets of this network namespace, and `SOCK_DESTROY`,
//! over `NETLINK_SOCK_DIAG` (`linux/inet_diag.h`): how the agent tears down
//! connections a policy update no longer allows, as ztunnel's
//! `PolicyWatcher` does. The killed socket's owner sees `ECONNABORTED`, its
//! peer a RST. Needs `CONFIG_INET_DIAG_DESTROY` and `CAP_NET_ADMIN`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// `INET_DIAG_CGROUP_ID` (kernel 5.7+), an attribute after `inet_diag_msg`.
const INET_DIAG_CGROUP_ID: u16 = 21;
const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sock_diag {op}: {source}")]
    Netlink { op: &'static str, source: io::Error },
    #[error("sock_diag: the kernel refused {op}: {source} (needs CONFIG_INET_DIAG_DESTROY and the tcp_diag module: modprobe tcp_diag)")]
    Refused { op: &'static str, source: io::Error },
}

/// One TCP socket as `inet_diag` reports it, from the socket's own side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub interface: u32,
    cookie: [u32; 2],
    /// The socket's cgroup (kernel 5.7+).
    pub cgroup: Option<u64>,
}

impl Socket {
    /// The socket cookie, as `bpf_get_socket_cookie` gives it.
    pub fn cookie(&self) -> u64 {
        u64::from(self.cookie[0]) | (u64::from(self.cookie[1]) << 32)
    }
}

/// Every ESTABLISHED TCP socket of this network namespace.
pub fn established() -> Result<Vec<Socket>, Error> {
    dump(1 << TCP_ESTABLISHED)
}

/// Every listening TCP socket of this network namespace.
pub fn listening() -> Result<Vec<Socket>, Error> {
    dump(1 << TCP_LISTEN)
}

fn dump(states: u32) -> Result<Vec<Socket>, Error> {
    let fd = open()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let req = request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            Target::States(states),
        );
        send(&fd, &req, "dump")?;
        receive(&fd, "dump", |payload| {
            if let Some(s) = parse(payload) {
                out.push(s);
            }
        })?;
    }
    Ok(out)
}

/// Kill one socket (`SOCK_DESTROY`).
pub fn destroy(sock: &Socket) -> Result<(), Error> {
    let fd = open()?;
    let family = if sock.local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let req = request(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        Target::One(sock),
    );
    send(&fd, &req, "destroy")?;
    receive(&fd, "destroy", |_| {})
}

fn open() -> Result<OwnedFd, Error> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|e| Error::Netlink {
        op: "socket",
        source: e.into(),
    })
}

fn send(fd: &OwnedFd, req: &[u8], op: &'static str) -> Result<(), Error> {
    sendto(
        fd.as_raw_fd(),
        req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map(drop)
    .map_err(|e| Error::Netlink {
        op,
        source: e.into(),
    })
}

/// Read replies until `NLMSG_DONE` or an ack/error; hand each data payload
/// to `each`.
fn receive(fd: &OwnedFd, op: &'static str, mut each: impl FnMut(&[u8])) -> Result<(), Error> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| Error::Netlink {
            op,
            source: e.into(),
        })?;
        let mut off = 0;
        while off + NLMSG_HDR <= n {
            let len = u32_at(&buf, off) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < NLMSG_HDR || off + len > n {
                return Ok(());
            }
            let payload = &buf[off + NLMSG_HDR..off + len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        payload
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0; 4]),
                    );
                    if errno == 0 {
                        return Ok(());
                    }
                    return Err(Error::Refused {
                        op,
                        source: io::Error::from_raw_os_error(-errno),
                    });
                }
                _ => each(payload),
            }
            off += (len + 3) & !3;
        }
    }
}

/// What a request is about: sockets in some states, or one socket.
enum Target<'a> {
    States(u32),
    One(&'a Socket),
}

/// `nlmsghdr` + `inet_diag_req_v2`.
fn request(kind: u16, flags: u16, family: u8, target: Target<'_>) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    b.extend(((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    b.extend(kind.to_ne_bytes());
    b.extend(flags.to_ne_bytes());
    b.extend(1u32.to_ne_bytes()); // seq
    b.extend(0u32.to_ne_bytes()); // pid
    b.extend([family, IPPROTO_TCP, 0, 0]);
    let (states, sock) = match target {
        Target::States(states) => (states, None),
        Target::One(sock) => (u32::MAX, Some(sock)),
    };
    b.extend(states.to_ne_bytes());
    match sock {
        Some(s) => {
            b.extend(s.local.port().to_be_bytes());
            b.extend(s.remote.port().to_be_bytes());
            b.extend(addr_bytes(s.local.ip()));
            b.extend(addr_bytes(s.remote.ip()));
            b.extend(s.interface.to_ne_bytes());
            b.extend(s.cookie[0].to_ne_bytes());
            b.extend(s.cookie[1].to_ne_bytes());
        }
        None => b.resize(NLMSG_HDR + REQ_LEN, 0),
    }
    b
}

/// An `inet_diag_msg`.
fn parse(p: &[u8]) -> Option<Socket> {
    if p.len() < MSG_LEN {
        return None;
    }
    let family = i32::from(p[0]);
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let addr = |at: usize| -> IpAddr {
        let b: [u8; 16] = p[at..at + 16].try_into().unwrap_or([0; 16]);
        if family == libc::AF_INET {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(b))
        }
    };
    Some(Socket {
        local: SocketAddr::new(addr(8), sport),
        remote: SocketAddr::new(addr(24), dport),
        interface: u32_at(p, 40),
        cookie: [u32_at(p, 44), u32_at(p, 48)],
        cgroup: cgroup_attr(&p[MSG_LEN..]),
    })
}

/// The `INET_DIAG_CGROUP_ID` attribute among the `rtattr`s after the message.
fn cgroup_attr(mut attrs: &[u8]) -> Option<u64> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            return attrs[4..12].try_into().ok().map(u64::from_ne_bytes);
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}
