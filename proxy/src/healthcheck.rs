//! `mqtt-proxy healthcheck [URL]`: the container's own probe. Distroless images have no curl
//! or shell, so the binary checks its own `/healthz` and exits 0 on `200`, 1 otherwise
//! (Docker's `HEALTHCHECK` contract). Plain HTTP/1.1 over a std socket with a deadline: a
//! probe must not hang and needs no runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

/// The URL probed without an argument: `/healthz` on the port of `MQTT_PROXY_HTTP_LISTEN`
/// (the image sets it), on loopback when the proxy listens on every address.
fn default_url(http_listen: Option<&str>) -> String {
    let addr = http_listen
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 3000)));
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}/healthz", addr.port())
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.ends_with(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// GETs `url`; `Ok` with the status code of the answer.
fn probe(url: &str) -> Result<u16, String> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    let io = |e: std::io::Error| format!("{addr}: {e}");
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    // The status line is all we need: read until it is complete (bounded), so a server that
    // closes right after answering cannot turn a good answer into a reset error.
    let mut head = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if head.is_empty() => return Err(io(e)),
            Err(_) => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))
}

/// Runs the subcommand with the arguments after `healthcheck`; returns the exit code.
pub fn run(mut args: impl Iterator<Item = String>) -> i32 {
    let url = args
        .next()
        .unwrap_or_else(|| default_url(std::env::var("MQTT_PROXY_HTTP_LISTEN").ok().as_deref()));
    match probe(&url) {
        Ok(200) => 0,
        Ok(code) => {
            eprintln!("healthcheck: {url} answered {code}");
            1
        }
        Err(e) => {
            eprintln!("healthcheck: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot HTTP server on a free loopback port answering `status_line`.
    fn serve_once(status_line: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}/healthz", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            // Read the whole request first, as a real server does: closing with unread
            // bytes makes the kernel reset the connection.
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(conn, "{status_line}\r\ncontent-length: 2\r\n\r\nok");
            String::from_utf8_lossy(&req).into_owned()
        });
        (url, handle)
    }

    #[test]
    fn healthy_on_200() {
        let (url, server) = serve_once("HTTP/1.1 200 OK");
        assert_eq!(run(std::iter::once(url)), 0);
        let request = server.join().expect("server thread");
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn unhealthy_on_503() {
        let (url, server) = serve_once("HTTP/1.1 503 Service Unavailable");
        assert_eq!(run(std::iter::once(url)), 1);
        server.join().expect("server thread");
    }

    #[test]
    fn unhealthy_when_nothing_listens() {
        // Bind then drop: the port is free and refuses connections.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        assert_eq!(
            run(std::iter::once(format!("http://127.0.0.1:{port}/healthz"))),
            1
        );
    }

    #[test]
    fn default_url_follows_the_http_listener() {
        assert_eq!(default_url(None), "http://127.0.0.1:3000/healthz");
        assert_eq!(
            default_url(Some("0.0.0.0:8081")),
            "http://127.0.0.1:8081/healthz"
        );
        assert_eq!(
            default_url(Some("10.1.2.3:3000")),
            "http://10.1.2.3:3000/healthz"
        );
        assert_eq!(
            default_url(Some("[::]:3000")),
            "http://127.0.0.1:3000/healthz"
        );
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://localhost:3000/readyz"),
            Ok(("localhost:3000".into(), "/readyz".into()))
        );
        assert_eq!(
            split_url("http://localhost"),
            Ok(("localhost:80".into(), "/healthz".into()))
        );
        assert!(split_url("https://localhost/healthz").is_err());
    }
}
