//! What the fleet and churn scenarios read about running processes from `/proc` (Linux):
//! resident memory, CPU time, open descriptors, and this process's open-file limit. Plus a
//! minimal `GET /metrics` scrape of the proxy and a lookup of one Prometheus sample.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// User + system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the numeric fields follow its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = tick(11) + tick(12);
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Time `pid`'s threads spent runnable but waiting for a CPU (the run queue delay of
/// `/proc/<pid>/task/*/schedstat`, second field, ns), summed over its live threads: what a
/// busy box adds to a process's latency.
pub fn cpu_wait(pid: u32) -> anyhow::Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for t in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = t?.path().join("schedstat");
        // A thread that exited between the listing and the read adds nothing.
        if let Ok(s) = std::fs::read_to_string(&path) {
            ns += s
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(ns))
}

/// `sysconf(_SC_CLK_TCK)` without `unsafe`: asked of `getconf` once; 100 (Linux's
/// USER_HZ on every mainstream architecture) if that fails.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// This process's open-file limit (soft, hard); children inherit the soft one.
pub fn fd_limit() -> anyhow::Result<(u64, u64)> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    parse_fd_limit(&limits).context("no 'Max open files' line in /proc/self/limits")
}

fn parse_fd_limit(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut v = line["Max open files".len()..].split_whitespace().map(|s| {
        if s == "unlimited" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    });
    Some((v.next()??, v.next()??))
}

/// Refuses a fleet that cannot fit under the open-file limit, saying what it found.
/// `needs` lists (process, descriptors it will hold).
pub fn check_fd_budget(needs: &[(&str, u64)]) -> anyhow::Result<String> {
    let (soft, hard) = fd_limit()?;
    let mut line = format!(
        "open-file limit: soft {soft}, hard {hard} (children inherit the soft limit); needed:"
    );
    for (who, n) in needs {
        line.push_str(&format!(" {who} ~{n}"));
    }
    if let Some((who, n)) = needs.iter().find(|(_, n)| *n > soft) {
        anyhow::bail!(
            "{line}\n{who} would need ~{n} descriptors but the soft limit is {soft}: \
             raise it with `ulimit -n` (up to {hard}) or use fewer --devices"
        );
    }
    Ok(line)
}

/// The body of `GET /metrics` on `127.0.0.1:<port>` (bounded by `timeout`).
pub async fn scrape(http_port: u16, timeout: Duration) -> anyhow::Result<String> {
    let work = async {
        let mut s = TcpStream::connect(("127.0.0.1", http_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow::anyhow!("GET /metrics timed out"))??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "GET /metrics: {head}"
    );
    Ok(body.to_string())
}

/// Every sample of `name` in a Prometheus text body whose labels contain each of `labels`
/// (`k="v"`), as (its label pairs, its value).
fn samples<'a>(
    body: &'a str,
    name: &'a str,
    labels: &'a [&'a str],
) -> impl Iterator<Item = (Vec<&'a str>, f64)> + 'a {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |line| {
            let rest = line.strip_prefix(name)?;
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let set: Vec<&str> = labelset.split(',').collect();
            if !labels.iter().all(|l| set.contains(l)) {
                return None;
            }
            Some((set, value.trim().parse().ok()?))
        })
}

/// The sum of every sample of `name` whose labels contain each of `labels` (`k="v"`);
/// `None` when there is none.
pub fn metric(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    samples(body, name, labels).fold(None, |sum, (_, v)| Some(sum.unwrap_or(0.0) + v))
}

/// The upper bound of the bucket of histogram `name` (samples whose labels contain each of
/// `labels`) that holds quantile `q`: "`q` of the observations took at most this". `None`
/// without observations; `f64::INFINITY` when the quantile lies past the last bound.
pub fn histogram_quantile(body: &str, name: &str, labels: &[&str], q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (set, count) in samples(body, &bucket, labels) {
        let Some(le) = set.iter().find_map(|l| l.strip_prefix("le=\"")) else {
            continue;
        };
        let le = match le.trim_end_matches('"') {
            "+Inf" => f64::INFINITY,
            v => v.parse().ok()?,
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantile_is_the_bound_of_the_bucket_that_holds_it() {
        let body = "# TYPE h histogram\n\
            h_bucket{broker=\"b1\",le=\"0.001\"} 90\n\
            h_bucket{broker=\"b1\",le=\"0.01\"} 99\n\
            h_bucket{broker=\"b1\",le=\"0.1\"} 100\n\
            h_bucket{broker=\"b1\",le=\"+Inf\"} 100\n\
            h_bucket{broker=\"b2\",le=\"0.001\"} 0\n\
            h_bucket{broker=\"b2\",le=\"+Inf\"} 0\n";
        let q = |b: &str, q| histogram_quantile(body, "h", &[b], q);
        assert_eq!(q("broker=\"b1\"", 0.5), Some(0.001));
        assert_eq!(q("broker=\"b1\"", 0.99), Some(0.01));
        assert_eq!(q("broker=\"b1\"", 1.0), Some(0.1));
        assert_eq!(q("broker=\"b2\"", 0.99), None, "no observations");
    }

    #[test]
    fn reads_the_open_file_limit_line() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95000                95000                processes\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(parse_fd_limit(limits), Some((20000, 20000)));
        assert_eq!(
            parse_fd_limit("Max open files unlimited unlimited files"),
            Some((u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn sums_matching_samples() {
        let body = "# HELP x\nmqtt_proxy_devices_connected 7\n\
                    mqtt_proxy_upstream_connected{broker=\"b1\"} 3\n\
                    mqtt_proxy_upstream_connected{broker=\"b2\"} 4\n\
                    mqtt_proxy_upstream_connected_other 9\n";
        assert_eq!(metric(body, "mqtt_proxy_devices_connected", &[]), Some(7.0));
        assert_eq!(
            metric(body, "mqtt_proxy_upstream_connected", &[]),
            Some(7.0)
        );
        assert_eq!(
            metric(body, "mqtt_proxy_upstream_connected", &["broker=\"b2\""]),
            Some(4.0)
        );
        assert_eq!(metric(body, "mqtt_proxy_missing", &[]), None);
    }

    #[test]
    fn this_process_is_measurable() {
        let pid = std::process::id();
        let (rss, hwm) = rss_kb(pid).expect("status");
        assert!(rss > 0 && hwm >= rss);
        assert!(fd_count(pid).expect("fds") >= 3);
        assert!(cpu_time(pid).is_ok());
        assert!(fd_limit().expect("limit").0 > 0);
    }
}
