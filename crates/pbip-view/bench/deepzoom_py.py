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


def start_server():
    p = subprocess.Popen(
        [pbip_bin, "view", slide_path, "--port", "0", "--quality", str(QUALITY),
         "--tile-size", str(TILE), "--overlap", str(OVERLAP)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
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


def fetch_all_rust(port, paths, threads):
    r = subprocess.run([load_bin, str(port), str(threads)], input="\n".join(paths) + "\n",
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"view_load failed: {r.stderr}")
    return int(r.stdout.split()[0])


def server_cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().split()
    return (int(st[13]) + int(st[14])) / os.sysconf("SC_CLK_TCK") * 1000.0


def tile_path(level, c, r):
    return f"/slides/{slide_id}_files/{level}/{c}_{r}.jpeg"


rows_out = []
peak = {}
for threads in (1, 2):
    # openslide-python: DeepZoomGenerator.get_tile + JPEG encoding, in process.
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
    rows_out.append(
        (f"openslide-python {openslide.__version__} (OpenSlide {openslide.__library_version__}) "
         f"DeepZoomGenerator.get_tile + JPEG q{QUALITY}, in process", threads, n / dt, f"{cpu:.2f}", nbytes / n / 1024)
    )
    osr.close()

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
print()
print("| pbip view peak RSS (VmHWM) | MiB |")
print("|---|---|")
for k, v in peak.items():
    print(f"| {k} | {v:.0f} |")
print()
print(f"panning sweep: {len(paths)} tiles in {dt_pan:.1f} s ({len(paths) / dt_pan:.0f} tiles/s)")
print(f"mean |pbip tile - openslide tile| per channel over 20 tiles: {sum(diffs) / len(diffs):.2f} "
      f"(two independent JPEG q{QUALITY} encodings of the same pixels)")
