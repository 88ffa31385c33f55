"""Tile benchmark: `pbip view` over HTTP vs openslide-python's DeepZoomGenerator, same slide,
same tiles, same run (see tiles.sh and RESULTS.md).

Usage: python deepzoom_py.py SLIDE PBIP_BIN [N] [VIEW_LOAD_BIN]     [env: TILE (254), OVERLAP (1)]

1. N random DeepZoom tiles of the highest level (TILE px + OVERLAP px, seeded), fetched
   - from `pbip view SLIDE --port 0` with keep-alive HTTP clients (1 and 2 client threads; a fresh
     server for each row, so its caches start cold): Python `http.client` connections, and, when
     VIEW_LOAD_BIN (examples/view_load.rs) is given, that Rust client too (whose per-request
     CPU is a few per cent of the Python one's, which shares the same cores with the server), and
   - with `DeepZoomGenerator(slide, TILE, OVERLAP, limit_bounds=False).get_tile(level, (col, row))` plus
     the JPEG encoding OpenSlide's deepzoom server does (`save(..., "jpeg", quality=75)`), in
     process (1 and 2 threads; a fresh OpenSlide handle per row).
   and, on a machine with two or more CPUs, once more with one core for the tile work on each
   side ("one core each"): OpenSlide's loop pinned to the first CPU, and `pbip view` pinned to
   that CPU while the Rust client (4 keep-alive connections, so that requests are always
   waiting even when the client's core stalls for a moment) runs on the second one, three
   alternations. In the rows above, the HTTP client shares the cores with the server (a
   benchmark's load generator competing with what it measures); these rows give each
   implementation the same compute.
2. Panning: a 1920 x 1080 viewport swept across the slide at the four most detailed levels
   (every tile of each view fetched, 2 clients) on a fresh server; the server's peak RSS
   (VmHWM) is read from /proc after the random runs and after the sweep.
3. Agreement: mean absolute difference of the decoded pbip and OpenSlide tiles (two JPEG
   encodings of the same pixels: a few grey levels).

Prints one markdown table.
"""
import http.client
import io
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image, ImageChops, ImageStat

TILE = int(os.environ.get("TILE", "254"))
OVERLAP = int(os.environ.get("OVERLAP", "1"))
QUALITY = 75

slide_path, pbip_bin = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
load_bin = sys.argv[4] if len(sys.argv) > 4 else None
slide_id = os.path.splitext(os.path.basename(slide_path))[0]

osr = openslide.OpenSlide(slide_path)
dz = DeepZoomGenerator(osr, tile_size=TILE, overlap=OVERLAP, limit_bounds=False)
top = dz.level_count - 1
cols, rows = dz.level_tiles[top]
rng = random.Random(0)
tiles = [(rng.randrange(cols), rng.randrange(rows)) for _ in range(n)]
osr.close()


def pinned_to(cpus):
    """A `preexec_fn` that pins the child to `cpus` (None: no pinning)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def start_server(cpus=None):
    p = subprocess.Popen(
        [pbip_bin, "view", slide_path, "--port", "0", "--quality", str(QUALITY),
         "--tile-size", str(TILE), "--overlap", str(OVERLAP)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=pinned_to(cpus),
    )
    for line in p.stdout:
        if line.startswith("serving "):
            url = line.split()[1]
            return p, int(url.rstrip("/").rsplit(":", 1)[1])
    raise SystemExit("pbip view did not start")


def stop(p):
    p.terminate()
    p.wait()


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def fetch_all(port, paths, threads):
    chunks = [paths[i::threads] for i in range(threads)]

    def run(chunk):
        c = http.client.HTTPConnection("127.0.0.1", port)
        total = 0
        for path in chunk:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            if r.status != 200 or r.getheader("X-Pbip-Error"):
                raise SystemExit(f"{path}: {r.status} {r.getheader('X-Pbip-Error')}")
            total += len(body)
        c.close()
        return total

    with ThreadPoolExecutor(threads) as ex:
        return sum(ex.map(run, chunks))


def fetch_all_rust(port, paths, threads, cpus=None):
    r = subprocess.run([load_bin, str(port), str(threads)], input="\n".join(paths) + "\n",
                       capture_output=True, text=True, preexec_fn=pinned_to(cpus))
    if r.returncode != 0:
        raise SystemExit(f"view_load failed: {r.stderr}")
    return int(r.stdout.split()[0])


def server_cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().split()
    return (int(st[13]) + int(st[14])) / os.sysconf("SC_CLK_TCK") * 1000.0


def tile_path(level, c, r):
    return f"/slides/{slide_id}_files/{level}/{c}_{r}.jpeg"


def openslide_run(threads):
    """openslide-python: DeepZoomGenerator.get_tile + JPEG encoding, in process, on a fresh
    handle. Returns (tiles/s, CPU ms per tile, bytes)."""
    osr = openslide.OpenSlide(slide_path)
    gen = DeepZoomGenerator(osr, tile_size=TILE, overlap=OVERLAP, limit_bounds=False)

    def os_tile(t):
        buf = io.BytesIO()
        gen.get_tile(top, t).save(buf, "jpeg", quality=QUALITY)
        return len(buf.getvalue())

    c0 = time.process_time()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        nbytes = sum(ex.map(os_tile, tiles))
    dt = time.perf_counter() - t0
    cpu = (time.process_time() - c0) * 1000.0 / n
    osr.close()
    return n / dt, cpu, nbytes


OS_NAME = (f"openslide-python {openslide.__version__} (OpenSlide {openslide.__library_version__}) "
           f"DeepZoomGenerator.get_tile + JPEG q{QUALITY}, in process")

rows_out = []
peak = {}
for threads in (1, 2):
    rate, cpu, nbytes = openslide_run(threads)
    rows_out.append((OS_NAME, threads, rate, f"{cpu:.2f}", nbytes / n / 1024))

    # pbip view over HTTP, a fresh server per client kind (cold caches).
    clients = [("Python http.client", fetch_all)]
    if load_bin:
        clients.append(("Rust view_load", fetch_all_rust))
    for client, fetch in clients:
        p, port = start_server()
        cpu0 = server_cpu_ms(p.pid)  # start-up: catalog, slide open
        t0 = time.perf_counter()
        nbytes = fetch(port, [tile_path(top, c, r) for c, r in tiles], threads)
        dt = time.perf_counter() - t0
        cpu = (server_cpu_ms(p.pid) - cpu0) / n
        peak[f"random tiles, {threads} client(s), {client}"] = peak_rss_mib(p.pid)
        stop(p)
        rows_out.append((f"pbip view over HTTP, {client} keep-alive clients, JPEG q{QUALITY}", threads, n / dt, f"{cpu:.2f} (server)", nbytes / n / 1024))

# One core each: OpenSlide's loop on the first CPU; pbip view on it, its client on the second.
# Three alternations (a VM's speed drifts within a run), each pair compared on its own.
one_core = []
cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
if len(cpus) >= 2:
    core, other = {cpus[0]}, {cpus[1]}
    saved = os.sched_getaffinity(0)
    paths_top = [tile_path(top, c, r) for c, r in tiles]
    for _ in range(3):
        os.sched_setaffinity(0, core)
        try:
            os_rate, os_cpu, _ = openslide_run(1)
        finally:
            os.sched_setaffinity(0, saved)
        p, port = start_server(core)
        cpu0 = server_cpu_ms(p.pid)
        t0 = time.perf_counter()
        if load_bin:
            client = f"Rust view_load, 4 connections, on CPU {cpus[1]}"
            nbytes = fetch_all_rust(port, paths_top, 4, other)
        else:
            client = f"Python http.client, 4 connections, on CPU {cpus[1]}"
            os.sched_setaffinity(0, other)
            try:
                nbytes = fetch_all(port, paths_top, 4)
            finally:
                os.sched_setaffinity(0, saved)
        dt = time.perf_counter() - t0
        cpu = (server_cpu_ms(p.pid) - cpu0) / n
        stop(p)
        one_core.append((os_rate, os_cpu, n / dt, cpu))

# Panning sweep on a fresh server.
p, port = start_server()
paths = []
view_w, view_h = 1920, 1080
for level in range(top, top - 4, -1):
    lw, lh = dz.level_dimensions[level]
    tc, tr = dz.level_tiles[level]
    for y in range(0, lh, view_h * 6):
        for x in range(0, lw, view_w):
            c0, r0 = x // TILE, y // TILE
            for r in range(r0, min(tr, (y + view_h) // TILE + 1)):
                for c in range(c0, min(tc, (x + view_w) // TILE + 1)):
                    paths.append(tile_path(level, c, r))
t0 = time.perf_counter()
fetch_all(port, paths, 2)
dt_pan = time.perf_counter() - t0
peak[f"panning sweep, {len(paths)} tiles on 4 levels, 2 clients"] = peak_rss_mib(p.pid)

# Agreement of the two implementations on the first tiles.
osr = openslide.OpenSlide(slide_path)
gen = DeepZoomGenerator(osr, tile_size=TILE, overlap=OVERLAP, limit_bounds=False)
conn = http.client.HTTPConnection("127.0.0.1", port)
diffs = []
for c, r in tiles[:20]:
    conn.request("GET", tile_path(top, c, r))
    mine = Image.open(io.BytesIO(conn.getresponse().read())).convert("RGB")
    ref = gen.get_tile(top, (c, r)).convert("RGB")
    assert mine.size == ref.size, (mine.size, ref.size)
    diffs.append(sum(ImageStat.Stat(ImageChops.difference(mine, ref)).mean) / 3)
stop(p)

w, h = osr.dimensions
print(f"slide: {os.path.basename(slide_path)}, {w} x {h} px, {osr.level_count} levels, "
      f"DeepZoom level {top} ({cols} x {rows} tiles of {TILE} px + {OVERLAP} px overlap), {n} random tiles")
print()
print("| implementation | threads / clients | tiles/s | CPU ms/tile | KiB/tile |")
print("|---|---|---|---|---|")
for name, threads, rate, cpu, kib in rows_out:
    print(f"| {name} | {threads} | {rate:.0f} | {cpu} | {kib:.1f} |")
print()
for t in (1, 2):
    a = [r for r in rows_out if r[1] == t]
    for r in a[1:]:
        print(f"speed-up, {t} thread(s), {r[0].split(', ')[1]}: {r[2] / a[0][2]:.2f}x "
              f"(tiles/s), {float(a[0][3]) / float(r[3].split()[0]):.2f}x (CPU ms/tile)")
if one_core:
    print()
    print(f"One core each for the tile work, CPU {cpus[0]}: OpenSlide's loop (1 thread) and "
          f"pbip view (its client: {client}); three alternations:")
    print()
    print("| alternation | OpenSlide tiles/s | OpenSlide CPU ms/tile | pbip view tiles/s | "
          "pbip view CPU ms/tile (server) | speed-up tiles/s | speed-up CPU |")
    print("|---|---|---|---|---|---|---|")
    ups = []
    for i, (r0, c0_, r1, c1_) in enumerate(one_core, 1):
        ups.append(r1 / r0)
        print(f"| {i} | {r0:.0f} | {c0_:.2f} | {r1:.0f} | {c1_:.2f} | {r1 / r0:.2f}x | "
              f"{c0_ / c1_:.2f}x |")
    print()
    print(f"speed-up, one core each: {sorted(ups)[1]:.2f}x (tiles/s, median of 3)")
print()
print("| pbip view peak RSS (VmHWM) | MiB |")
print("|---|---|")
for k, v in peak.items():
    print(f"| {k} | {v:.0f} |")
print()
print(f"panning sweep: {len(paths)} tiles in {dt_pan:.1f} s ({len(paths) / dt_pan:.0f} tiles/s)")
print(f"mean |pbip tile - openslide tile| per channel over 20 tiles: {sum(diffs) / len(diffs):.2f} "
      f"(two independent JPEG q{QUALITY} encodings of the same pixels)")
