//! A tiny TCP server and client for the integration tests, so they need no
//! other tools. Every outcome is one line on stdout.
//!
//! - `zgate-probe serve ADDR`: listen, print `listening`, greet and echo
//!   each connection.
//! - `zgate-probe connect ADDR [HOLD_SECS]`: print `connected`, `refused`,
//!   `not-permitted`, `timeout` or `error: …`; with HOLD_SECS keep the
//!   connection open and print `closed` / `reset` when the peer ends it,
//!   or `held` if it survived.
//! - `zgate-probe get ADDR PATH`: an HTTP/1.1 GET; prints the response.
//! - `zgate-probe bench ADDR N`: N connect+accept+close rounds; prints
//!   `rate <connections per second>`.
//! - `zgate-probe flip ADDR SECS`: connect in a loop until the outcome
//!   changes; prints `flip <outcome> <unix time in ns>` (or `steady`).

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
        (Some("serve"), Some(addr)) => serve(addr),
        (Some("connect"), Some(addr)) => {
            let hold = args.get(3).and_then(|s| s.parse().ok());
            connect(addr, hold)
        }
        (Some("get"), Some(addr)) => get(addr, args.get(3).map_or("/", String::as_str)),
        (Some("bench"), Some(addr)) => bench(
            addr,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000),
        ),
        (Some("flip"), Some(addr)) => {
            flip(addr, args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10))
        }
        _ => {
            eprintln!("usage: zgate-probe serve ADDR | connect ADDR [HOLD_SECS]");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn serve(addr: SocketAddr) {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            println!("error: bind {addr}: {e}");
            return;
        }
    };
    println!("listening");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let _ = stream.write_all(b"hello\n");
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

/// `PROBE_SOURCE=IP` binds the client to that source address first.
fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = std::env::var("PROBE_SOURCE")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return TcpStream::connect_timeout(&addr, Duration::from_secs(3));
    };
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let local = SockaddrStorage::from(SocketAddr::new(source, 0));
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &local)?;
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(TcpStream::from(fd))
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
    let started = Instant::now();
    for _ in 0..rounds {
        match TcpStream::connect(addr) {
            Ok(s) => {
                // The greeting proves the server accepted the connection.
                let mut b = [0u8; 6];
                let _ = (&s).read_exact(&mut b);
            }
            Err(e) => {
                println!("{}", outcome(&e));
                return;
            }
        }
    }
    println!(
        "rate {:.0}",
        f64::from(rounds) / started.elapsed().as_secs_f64()
    );
}

fn flip(addr: SocketAddr, secs: u64) {
    let attempt = || match TcpStream::connect(addr) {
        Ok(_) => "connected".to_owned(),
        Err(e) => outcome(&e),
    };
    let first = attempt();
    println!("start {first}");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
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

fn outcome(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::PermissionDenied => "not-permitted".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => "reset".into(),
        _ => format!("error: {e}"),
    }
}
