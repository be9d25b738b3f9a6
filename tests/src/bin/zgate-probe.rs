//! A tiny TCP server and client for the integration tests, so they need no
//! other tools. Every outcome is one line on stdout.
//!
//! - `zgate-probe serve ADDR`: listen, print `listening`, greet and echo
//!   each connection.
//! - `zgate-probe greet ADDR`: listen, print `listening`, then greet and
//!   close each connection in turn on one thread (a connection-setup
//!   benchmark's server: nothing per connection but accept, write, close).
//! - `zgate-probe unbound`: listen on a port `listen()` picks (no
//!   `bind()`, on every IPv4 address), print `listening PORT`, then greet
//!   and echo as `serve` does.
//! - `zgate-probe reuse ADDR`: listen on two `SO_REUSEPORT` sockets (as a
//!   server's worker processes do), close the first, print `listening`,
//!   then greet on the second as `greet` does.
//! - `zgate-probe connect ADDR [HOLD_SECS]`: print `connected`, `refused`,
//!   `not-permitted`, `timeout` or `error: …`; with HOLD_SECS keep the
//!   connection open and print `closed` / `reset` when the peer ends it,
//!   or `held` if it survived.
//! - `zgate-probe tally ADDR N`: N connections, whatever their outcome;
//!   prints `tally connected=… refused=… not-permitted=… other=…`.
//! - `zgate-probe on ADDR FILE`: print `waiting`, wait for FILE to exist,
//!   then connect once as `connect` does.
//! - `zgate-probe get ADDR PATH`: an HTTP/1.1 GET; prints the response.
//! - `zgate-probe bench ADDR N`: N connect+accept+close rounds; prints
//!   `rate <connections per second>`.
//! - `zgate-probe batches ADDR`: for each number N read from stdin, N
//!   rounds as `bench` does; prints `ns <elapsed>` for each batch.
//! - `zgate-probe binds N [FIRST]`: bind N TCP sockets, the FIRSTth (0
//!   by default) and on of 127.1.0.1:20000, 127.1.0.1:20001, … (40 000
//!   ports an address, above the agent's own), and keep them open until
//!   killed; prints `bound N`, or the first error.
//! - `zgate-probe flip ADDR SECS [GAP_US]`: connect in a loop, `GAP_US`
//!   microseconds apart (default 0), until the outcome changes; prints
//!   `flip <outcome> <unix time in ns>` (or `steady`).
//! - `zgate-probe sniff IFACE NEEDLE SECS`: capture every packet on IFACE
//!   (an `AF_PACKET` socket) for SECS; prints `sniffing` once capturing,
//!   then `tcp PORT:PACKETS ...` (IPv4 TCP packets by port, either side)
//!   and `needle COUNT` (TCP payloads containing NEEDLE).
//! - `zgate-probe reset ADDR`: connect, read the greeting, then close with
//!   a RST (so neither end keeps a socket); prints `reset <source port>`.
//! - `zgate-probe segment ADDR PORT`: send one bare ACK segment from
//!   PORT on ADDR's IPv4 address to ADDR through a raw socket, as a
//!   connection's trailing segment would arrive; prints `sent`.
//! - `zgate-probe rr ADDR N`: N one-byte request/response round trips on
//!   one connection to an echo server; prints `p50 <µs> p99 <µs>`.
//! - `zgate-probe bulk ADDR MIB`: send MIB MiB to an echo server while
//!   draining the echo; prints `throughput <MiB/s>`.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let addr: Option<SocketAddr> = args.get(2).and_then(|a| a.parse().ok());
    match (args.get(1).map(String::as_str), addr) {
        (Some("serve"), Some(addr)) => {
            if let Some(listener) = listen(addr) {
                serve(&listener);
            }
        }
        (Some("greet"), Some(addr)) => {
            if let Some(listener) = listen(addr) {
                greet(&listener);
            }
        }
        (Some("reuse"), Some(addr)) => reuse(addr),
        (Some("unbound"), _) => unbound(),
        (Some("connect"), Some(addr)) => {
            let hold = args.get(3).and_then(|s| s.parse().ok());
            connect(addr, hold)
        }
        (Some("tally"), Some(addr)) => tally(
            addr,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100),
        ),
        (Some("on"), Some(addr)) => {
            // Wait for the trigger file, then connect once.
            let trigger = args.get(3).map_or("/nonexistent", String::as_str);
            println!("waiting");
            let _ = std::io::stdout().flush();
            while !std::path::Path::new(trigger).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            connect(addr, None)
        }
        (Some("get"), Some(addr)) => get(addr, args.get(3).map_or("/", String::as_str)),
        (Some("bench"), Some(addr)) => bench(
            addr,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000),
        ),
        (Some("sniff"), _) => sniff(
            args.get(2).map_or("", String::as_str),
            args.get(3).map_or("", String::as_str),
            args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5),
        ),
        (Some("rr"), Some(addr)) => round_trips(
            addr,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000),
        ),
        (Some("bulk"), Some(addr)) => bulk(
            addr,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(256),
        ),
        (Some("reset"), Some(addr)) => reset(addr),
        (Some("segment"), Some(addr)) => {
            segment(addr, args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0))
        }
        (Some("batches"), Some(addr)) => batches(addr),
        (Some("binds"), _) => {
            let arg = |i: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
            binds(arg(2), arg(3))
        }
        (Some("flip"), Some(addr)) => {
            let number =
                |i: usize, default| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
            flip(addr, number(3, 10), Duration::from_micros(number(4, 0)))
        }
        _ => {
            eprintln!("usage: zgate-probe serve ADDR | connect ADDR [HOLD_SECS]");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn serve(listener: &TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let _ = stream.set_nodelay(true);
            let _ = stream.write_all(b"hello\n");
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

fn greet(listener: &TcpListener) {
    for stream in listener.incoming().flatten() {
        // Dropped at once: the server closes first.
        let _ = (&stream).write_all(b"hello\n");
    }
}

fn unbound() {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let listening = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        socket::listen(&fd, Backlog::MAXALLOWABLE)?;
        let local: SockaddrIn = socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
        Ok((TcpListener::from(fd), local.port()))
    });
    match listening {
        Ok((listener, port)) => {
            println!("listening {port}");
            let _ = std::io::stdout().flush();
            serve(&listener);
        }
        Err(e) => println!("error: listen: {e}"),
    }
}

fn reuse(addr: SocketAddr) {
    use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let bind = || -> nix::Result<TcpListener> {
        let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
        let sockaddr = socket::SockaddrStorage::from(addr);
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &sockaddr)?;
        socket::listen(&fd, Backlog::MAXALLOWABLE)?;
        Ok(TcpListener::from(fd))
    };
    match bind().and_then(|first| Ok((first, bind()?))) {
        Ok((first, second)) => {
            drop(first);
            println!("listening");
            let _ = std::io::stdout().flush();
            greet(&second);
        }
        Err(e) => println!("error: bind {addr}: {e}"),
    }
}

/// Bind `addr` and print `listening` (or the error).
/// Bind and listen on `addr`, with the longest accept queue the host
/// allows (`net.core.somaxconn`), not std's 128: a client connecting in a
/// loop (`flip`) fills 128 whenever the accepting thread is off the CPU
/// for a few milliseconds, and the SYN the kernel then drops is sent again
/// a second later, which `flip` would report as the policy's latency.
fn listen(addr: SocketAddr) -> Option<TcpListener> {
    let bound = TcpListener::bind(addr).and_then(|l| {
        // A second listen() on a listening socket only resizes its queue.
        nix::sys::socket::listen(&l, nix::sys::socket::Backlog::MAXALLOWABLE)?;
        Ok(l)
    });
    match bound {
        Ok(l) => {
            println!("listening");
            let _ = std::io::stdout().flush();
            Some(l)
        }
        Err(e) => {
            println!("error: bind {addr}: {e}");
            None
        }
    }
}

fn binds(n: u32, first: u32) {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};
    let mut open = Vec::new();
    for i in first..first.saturating_add(n) {
        let [a, b] = u16::try_from(i / 40_000 + 1)
            .unwrap_or(u16::MAX)
            .to_be_bytes();
        let addr = SockaddrIn::new(127, 1, a, b, 20_000 + (i % 40_000) as u16);
        let bound = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .and_then(|fd| socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map(|()| fd));
        match bound {
            Ok(fd) => open.push(fd),
            Err(e) => return println!("error: bind {addr}: {e}"),
        }
    }
    println!("bound {}", open.len());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `PROBE_SOURCE=IP` (or `IP:PORT`) binds the client to that source
/// address (and port) first.
fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = std::env::var("PROBE_SOURCE").ok().and_then(|s| {
        s.parse()
            .ok()
            .or_else(|| s.parse().ok().map(|ip| SocketAddr::new(ip, 0)))
    }) else {
        return TcpStream::connect_timeout(&addr, Duration::from_secs(3));
    };
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let local = SockaddrStorage::from(source);
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &local)?;
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(TcpStream::from(fd))
}

fn reset(addr: SocketAddr) {
    let stream = match dial(addr) {
        Ok(s) => s,
        Err(e) => return println!("{}", outcome(&e)),
    };
    let mut greeting = [0u8; 6];
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    if let Err(e) = (&stream).read_exact(&mut greeting) {
        return println!("{}", outcome(&e));
    }
    let port = stream.local_addr().map_or(0, |a| a.port());
    // SO_LINGER 0: close sends a RST and leaves no TIME_WAIT socket.
    let _ = nix::sys::socket::setsockopt(
        &stream,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(stream);
    println!("reset {port}");
}

fn segment(addr: SocketAddr, port: u16) {
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
    let SocketAddr::V4(dst) = addr else {
        return println!("error: IPv4 only");
    };
    let ip = dst.ip().octets();
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: five 32-bit words
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    // The checksum over the pseudo-header (source = destination address).
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for pair in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&ip);
    add(&ip);
    add(&[0, 6, 0, 20]);
    add(&tcp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let sent = socket::socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Tcp,
    )
    .and_then(|fd| {
        use std::os::fd::AsRawFd as _;
        let local = socket::SockaddrIn::from(std::net::SocketAddrV4::new(*dst.ip(), 0));
        socket::bind(fd.as_raw_fd(), &local)?;
        let to = socket::SockaddrIn::from(dst);
        socket::sendto(fd.as_raw_fd(), &tcp, &to, MsgFlags::empty())
    });
    match sent {
        Ok(_) => println!("sent"),
        Err(e) => println!("error: {e}"),
    }
}

fn connect(addr: SocketAddr, hold: Option<u64>) {
    let stream = match dial(addr) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", outcome(&e));
            return;
        }
    };
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => println!("connected"),
        Ok(_) => {
            println!("closed");
            return;
        }
        Err(e) => {
            println!("{}", outcome(&e));
            return;
        }
    }
    let _ = std::io::stdout().flush();
    let Some(secs) = hold else { return };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        // Keep traffic flowing so a torn-down connection is noticed at once.
        let _ = (&stream).write_all(b"ping");
        match reader.read(&mut buf) {
            Ok(0) => {
                println!("closed");
                return;
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                println!("{}", outcome(&e));
                return;
            }
        }
    }
    println!("held");
}

fn tally(addr: SocketAddr, rounds: u32) {
    let (mut connected, mut refused, mut not_permitted, mut other) = (0u32, 0u32, 0u32, 0u32);
    for _ in 0..rounds {
        match dial(addr) {
            Ok(s) => {
                // The greeting proves the server accepted it.
                let mut b = [0u8; 6];
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                match (&s).read_exact(&mut b) {
                    Ok(()) => connected += 1,
                    Err(_) => other += 1,
                }
            }
            Err(e) => match outcome(&e).as_str() {
                "refused" => refused += 1,
                "not-permitted" => not_permitted += 1,
                _ => other += 1,
            },
        }
    }
    println!(
        "tally connected={connected} refused={refused} not-permitted={not_permitted} other={other}"
    );
}

fn get(addr: SocketAddr, path: &str) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(mut s) => {
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            let _ = s.write_all(request.as_bytes());
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            print!("{body}");
        }
        Err(e) => println!("{}", outcome(&e)),
    }
}

fn bench(addr: SocketAddr, rounds: u32) {
    match connect_rounds(addr, rounds) {
        Ok(took) => println!("rate {:.0}", f64::from(rounds) / took.as_secs_f64()),
        Err(e) => println!("{}", outcome(&e)),
    }
}

/// `bench` on command, so a benchmark can interleave short batches of
/// several clients: each line on stdin is a number of rounds; prints
/// `ns <elapsed>` once they are done. Ends at the end of stdin.
fn batches(addr: SocketAddr) {
    for line in std::io::stdin().lines() {
        let Some(rounds) = line.ok().and_then(|l| l.trim().parse().ok()) else {
            return;
        };
        match connect_rounds(addr, rounds) {
            Ok(took) => println!("ns {}", took.as_nanos()),
            Err(e) => println!("{}", outcome(&e)),
        }
        let _ = std::io::stdout().flush();
    }
}

/// `rounds` connect+accept+close rounds, each reading the greeting (proof
/// that the server accepted); the time they took.
fn connect_rounds(addr: SocketAddr, rounds: u32) -> std::io::Result<Duration> {
    let started = Instant::now();
    for _ in 0..rounds {
        let s = TcpStream::connect(addr)?;
        let mut b = [0u8; 6];
        let _ = (&s).read_exact(&mut b);
    }
    Ok(started.elapsed())
}

fn flip(addr: SocketAddr, secs: u64, gap: Duration) {
    let attempt = || match TcpStream::connect(addr) {
        Ok(_) => "connected".to_owned(),
        Err(e) => outcome(&e),
    };
    let first = attempt();
    println!("start {first}");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        std::thread::sleep(gap);
        let now = attempt();
        if now != first {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            println!("flip {now} {at}");
            return;
        }
    }
    println!("steady");
}

fn sniff(iface: &str, needle: &str, secs: u64) {
    use nix::sys::socket::{self, AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType};
    let index = match nix::net::if_::if_nametoindex(iface) {
        Ok(i) => i as usize,
        Err(e) => return println!("error: {iface}: {e}"),
    };
    let fd = match socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    ) {
        Ok(fd) => fd,
        Err(e) => return println!("error: AF_PACKET socket: {e}"),
    };
    let timeout = nix::sys::time::TimeVal::new(0, 100_000);
    let _ = socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &timeout);
    println!("sniffing");
    let _ = std::io::stdout().flush();
    let mut ports = std::collections::BTreeMap::<u16, u64>::new();
    let mut found = 0u64;
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let Ok((n, Some(from))) = socket::recvfrom::<LinkAddr>(raw, &mut buf) else {
            continue;
        };
        if from.ifindex() != index {
            continue;
        }
        let Some((src, dst, payload)) = tcp_v4(&buf[..n]) else {
            continue;
        };
        *ports.entry(src).or_default() += 1;
        *ports.entry(dst).or_default() += 1;
        if !needle.is_empty()
            && payload
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        {
            found += 1;
        }
    }
    let list: Vec<String> = ports.iter().map(|(p, n)| format!("{p}:{n}")).collect();
    println!("tcp {}", list.join(" "));
    println!("needle {found}");
}

/// (source port, destination port, payload) of an Ethernet/IPv4/TCP frame.
fn tcp_v4(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let tcp = ip.get(ihl..total.min(ip.len()))?;
    let src = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dst = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    Some((src, dst, tcp.get(offset..).unwrap_or_default()))
}

/// One-byte round trips on one connection (after the greeting).
fn round_trips(addr: SocketAddr, n: usize) {
    let mut stream = match dial(addr) {
        Ok(s) => s,
        Err(e) => return println!("{}", outcome(&e)),
    };
    let _ = stream.set_nodelay(true);
    let mut greeting = [0u8; 6];
    if let Err(e) = stream.read_exact(&mut greeting) {
        return println!("{}", outcome(&e));
    }
    let mut samples = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for _ in 0..n {
        let started = Instant::now();
        if let Err(e) = stream
            .write_all(b"x")
            .and_then(|()| stream.read_exact(&mut b))
        {
            return println!("{}", outcome(&e));
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "p50 {:.1} p99 {:.1}",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}

/// Send `mib` MiB to an echo server, reading the echo on another thread.
fn bulk(addr: SocketAddr, mib: usize) {
    let stream = match dial(addr) {
        Ok(s) => s,
        Err(e) => return println!("{}", outcome(&e)),
    };
    let Ok(mut reader) = stream.try_clone() else {
        return println!("error: cloning the socket");
    };
    let total = mib * 1024 * 1024 + 6;
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let started = Instant::now();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut writer = &stream;
    for _ in 0..mib * 4 {
        if let Err(e) = writer.write_all(&chunk) {
            return println!("{}", outcome(&e));
        }
    }
    let got = drain.join().unwrap_or(0);
    let secs = started.elapsed().as_secs_f64();
    if got < total {
        return println!("error: echo ended after {got} of {total} bytes");
    }
    println!("throughput {:.1}", mib as f64 / secs);
}

fn outcome(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::PermissionDenied => "not-permitted".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => "reset".into(),
        _ => format!("error: {e}"),
    }
}
