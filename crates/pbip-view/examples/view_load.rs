//! A low-overhead HTTP load generator for the tile benchmark (`bench/tiles.sh`): fetches the URL
//! paths read from stdin (one a line) from `http://127.0.0.1:PORT` with `CLIENTS` keep-alive
//! connections (one thread each, paths dealt round-robin), checks that every answer is a 200
//! without `X-Pbip-Error`, and prints `<bytes> <seconds>` (body bytes, wall-clock time of the
//! fetches). A Python `http.client` loop costs about as much CPU per request as the server spends
//! on a cached tile; this one a few per cent of it, so the figures measure the server.
//!
//! `view_load PORT CLIENTS < paths.txt`

use std::io::{BufRead, Read};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: view_load PORT CLIENTS < paths.txt".into());
    }
    let port: u16 = args[1].parse()?;
    let clients: usize = args[2].parse::<usize>()?.max(1);
    let paths: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    let chunks: Vec<Vec<String>> = (0..clients)
        .map(|i| paths.iter().skip(i).step_by(clients).cloned().collect())
        .collect();
    let t0 = Instant::now();
    let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| s.spawn(move || fetch(port, chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
            })
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    println!("{bytes} {secs:.6}");
    Ok(())
}

/// Fetches `paths` on one keep-alive connection; the total body bytes.
fn fetch(port: u16, paths: &[String]) -> Result<usize, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(1)
        .build()
        .into();
    let mut body = Vec::with_capacity(64 << 10);
    let mut total = 0;
    for p in paths {
        let url = format!("http://127.0.0.1:{port}{p}");
        let mut r = agent.get(&url).call().map_err(|e| format!("{p}: {e}"))?;
        if r.status() != 200 || r.headers().contains_key("x-pbip-error") {
            return Err(format!(
                "{p}: {} {:?}",
                r.status(),
                r.headers().get("x-pbip-error")
            ));
        }
        body.clear();
        r.body_mut()
            .as_reader()
            .read_to_end(&mut body)
            .map_err(|e| format!("{p}: {e}"))?;
        total += body.len();
    }
    Ok(total)
}
