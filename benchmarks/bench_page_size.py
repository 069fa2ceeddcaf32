"""Bytes each page of the book makes a reader download: measured on the ci build, estimated for budget book.

    python benchmarks/bench_page_size.py [--html _build_ci/_build/html] [--json benchmarks/page_sizes.json]
    python benchmarks/bench_page_size.py --book-html _build/html --student-html _build_student/_build/html
    python benchmarks/bench_page_size.py --formats   # bytes per frame of typical players in candidate formats

Reads the ci build (`make test-book`). A page's own bytes are its HTML file (every player's frames are data: URIs
in it) plus the local images it shows; the theme's and MathJax's files under _static/ are shared by every page
(cached after the first) and are counted in the site only. Budget book is not built here (it takes far too long
on a CPU); each page's size under it is estimated from the ci page: the embedded frames of each player are scaled
by (book frames / ci frames) x (images per frame, book / ci), with the counts read off the chapter's
budget.pick(...) values (BOOK_FRAMES below); everything else on the page is taken as it is. A player that
BOOK_FRAMES does not list, or whose ci frame count differs from it (the chapter changed), is scaled to
viz.MAX_FRAMES frames, the most any player may have. Not modelled: more points per scatter frame under book
(e.g. 2000 instead of 600), which makes a frame's PNG somewhat larger.

With --book-html (a `make book` build, and --student-html its `make book-student`), nothing is estimated: each
page's book bytes are measured on that build, and the deployed site is the two editions' folders as built.

Writes the budgets and, per page and for the site, the ci bytes, the book bytes and their ratio to --json;
the browser check (make test-browser) multiplies the ci build's sizes by these ratios and fails a page (or the
site) over budget. The site is one edition's HTML folder; pages.yml deploys two (the book and the student
edition), so the site budget applies to twice the book estimate. Prints the command, the machine and a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shlex
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGE_BUDGET_BYTES = 5_000_000  # a page (HTML + its images) under budget book: ~10 s on a 4 Mbit/s phone connection
SITE_BUDGET_BYTES = 60_000_000  # everything pages.yml deploys (the book and its student edition) under budget book
EDITIONS = 2  # pages.yml deploys the book at the root and the student edition under student/

# Per page, each player in page order: (ci frames, book frames, images per frame book / ci), from the chapter's
# budget.pick(...) values (or a make book build, where so marked).
BOOK_FRAMES: dict[str, list[tuple[int, int, float]]] = {
    "book/part1/01_augmentation.html": [(8, 24, 1.0)] * 3,  # N_FRAMES = pick(ci=8, book=24), t's all distinct
    "book/part1/02_objective.html": [(8, 22, 1.0)],  # N_FRAMES 24: round(1000 ** (k / 23)) has 22 distinct t
    "book/part1/03_tying_weighting.html": [(8, 20, 1.0)],  # pick_frames(range(T), pick(ci=8, book=20))
    "book/part1/04_model.html": [(11, 11, 1.0)],  # the T = 10 chain: 11 states under every budget
    "book/part1/05_parameterisation.html": [(20, 20, 1.0)],  # pick_frames(..., 20) under every budget
    "book/part1/06_schedule.html": [(8, 20, 2.0), (8, 20, 1.0)],  # N_FRAMES = pick(ci=8, book=20); N_DIGITS 2 -> 4
    "book/part1/07_putting_together.html": [
        (8, 24, 1.0),
        (7, 23, 1.0),
    ],  # N_FRAMES = pick(ci=8, book=24); x_T has no x0_hat
    "book/part2/01_elbo.html": [(16, 16, 1.0)],  # 16 log-spaced steps under every budget
    "book/part2/02_three_objectives.html": [(10, 20, 1.0)],  # pick_frames(..., pick(ci=10, book=20))
    "book/part2/03_score_langevin.html": [
        (10, 17, 1.0),
        (11, 21, 1.0),
    ],  # 1 + chunks[:pick(ci=9, book=16)]; 1 + 10 levels x len(FRAME_STEPS) 1 -> 2
    "book/part2/04_guidance.html": [(5, 8, 1.0)],  # SCALES: 5 -> 8
    "book/part2/05_progressive_coding.html": [
        (10, 24, 1.0),
        (3, 11, 1.0),
    ],  # N_FRAMES = pick(ci=10, book=24); shared_ts 3 -> 11
    "book/part3/01_mnist.html": [(12, 40, 1.0)],  # 12 frames under ci; 40 in a make book build (measured)
    "book/part3/02_fast_sampling.html": [(2, 5, 1.0)],  # STEPS: [5, 10] -> [10, 20, 50, 100, 200]
    "book/part3/04_guided_mnist.html": [(3, 5, 1.6)],  # SCALES 3 -> 5; PER_CLASS = pick(ci=5, book=8) digits per row
    "book/part3/05_paper_model.html": [(3, 8, 1.0)],  # N_FRAMES = pick(ci=3, book=8), DDIM_STEPS 3 -> 10
}

_FRAME = re.compile(r"frames\[(\d+)\]\s*=\s*\"(data:image/[^\"]*)\"")
_PLAYER = '<div class="animation">'


class _Images(HTMLParser):
    """The src of every <img> of a page."""

    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.srcs.append(src)


def players_of(html: str) -> list[tuple[int, int]]:
    """(frames, bytes of their data: URIs) of each player of a page's HTML, in page order."""
    parts = html.split(_PLAYER)[1:]
    out = []
    for part in parts:
        frames = {int(m.group(1)): len(m.group(2)) for m in _FRAME.finditer(part)}
        out.append((len(frames), sum(frames.values())))
    return out


def own_images(page: Path, html: str, root: Path) -> dict[str, int]:
    """Bytes of each local image a page shows (not data: URIs, not the shared _static/)."""
    parser = _Images()
    parser.feed(html)
    sizes = {}
    for src in parser.srcs:
        parts = urlsplit(src)
        if parts.scheme or src.startswith("data:"):
            continue
        file = (page.parent / unquote(parts.path)).resolve()
        rel = file.relative_to(root.resolve()).as_posix() if file.is_relative_to(root.resolve()) else None
        if rel and not rel.startswith("_static/") and file.is_file():
            sizes[rel] = file.stat().st_size
    return sizes


def measure(root: Path, max_frames: int) -> tuple[dict, list[str]]:
    """Per page: ci bytes (HTML, images, frames) and the book estimate; warnings for players not in BOOK_FRAMES."""
    pages, warnings = {}, []
    for page in sorted((root / "book").rglob("*.html")):
        rel = page.relative_to(root).as_posix()
        html = page.read_text(encoding="utf-8")
        html_bytes = page.stat().st_size
        images = sum(own_images(page, html, root).values())
        players = players_of(html)
        table = BOOK_FRAMES.get(rel)
        extra, rows = 0.0, []
        for i, (n_ci, frame_bytes) in enumerate(players):
            known = table is not None and i < len(table) and table[i][0] == n_ci and len(table) == len(players)
            if known:
                _, n_book, content = table[i]
            else:
                n_book, content = max_frames, 1.0
                warnings.append(
                    f"{rel}: player {i + 1} ({n_ci} frames under ci) is not in BOOK_FRAMES as such: "
                    f"scaled to {max_frames} frames (viz.MAX_FRAMES)"
                )
            scale = n_book / n_ci * content
            extra += frame_bytes * (scale - 1.0)
            rows.append({"ci_frames": n_ci, "book_frames": n_book, "content": content, "frame_bytes_ci": frame_bytes})
        if table is not None and not players and table:
            warnings.append(f"{rel}: BOOK_FRAMES lists {len(table)} player(s), the page has none")
        ci = html_bytes + images
        book = ci + extra
        pages[rel] = {
            "ci_bytes": ci,
            "html_bytes": html_bytes,
            "image_bytes": images,
            "players": rows,
            "book_bytes": round(book),
            "ratio": round(book / ci, 4),
        }
    return pages, warnings


def page_bytes(root: Path) -> dict[str, int]:
    """Per page of a build: its HTML plus the local images it shows."""
    out = {}
    for page in sorted((root / "book").rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        out[page.relative_to(root).as_posix()] = page.stat().st_size + sum(own_images(page, html, root).values())
    return out


def measured_book(pages: dict, book_root: Path) -> list[str]:
    """Replace each page's book estimate by its bytes in a real book build; the warnings for pages it lacks."""
    book = page_bytes(book_root)
    warnings = [f"{rel}: not in {book_root}" for rel in pages if rel not in book]
    warnings += [f"{rel}: in {book_root} only" for rel in book if rel not in pages]
    for rel, p in pages.items():
        if rel in book:
            p["book_bytes"], p["ratio"], p["book_measured"] = book[rel], round(book[rel] / p["ci_bytes"], 4), True
    return warnings


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in load)}, Python {platform.python_version()}"
    )


def sizes(args) -> int:
    from ddpm_tutor import viz

    root = Path(args.html).resolve()
    if not (root / "index.html").is_file() or not (root / "book").is_dir():
        sys.exit(f"--html {root}: no built book there (index.html and book/); run `make test-book` first")
    pages, warnings = measure(root, viz.MAX_FRAMES)
    site_ci = dir_bytes(root)
    if args.book_html:
        book_root = Path(args.book_html).resolve()
        if not (book_root / "index.html").is_file():
            sys.exit(f"--book-html {book_root}: no built book there; run `make book` first")
        warnings = measured_book(pages, book_root)
        site_book = dir_bytes(book_root)
    else:
        site_book = site_ci + sum(p["book_bytes"] - p["ci_bytes"] for p in pages.values())
    student = Path(args.student_html).resolve() if args.student_html else None
    if student and not (student / "index.html").is_file():
        sys.exit(f"--student-html {student}: no built edition there; run `make book-student` first")
    deployed = site_book + dir_bytes(student) if student else site_book * EDITIONS
    site = {
        "ci_bytes": site_ci,
        "book_bytes": site_book,
        "book": f"measured on {args.book_html}" if args.book_html else "estimated from the ci build",
        "ratio": round(site_book / site_ci, 4),
        "editions": round(deployed / site_book, 4),  # the deployed site in units of the book's folder
        "deployed_book_bytes": deployed,
        "static_bytes": dir_bytes(root / "_static"),
    }

    mb = lambda b: f"{b / 1e6:6.2f}"  # noqa: E731
    print(
        f"{'page':38s} {'HTML':>6s} {'images':>6s} {'frames ci->book':>18s} {'ci MB':>6s} {'book MB':>7s} {'ratio':>5s}"
    )
    for rel, p in pages.items():
        frames = ",".join(f"{r['ci_frames']}->{r['book_frames']}" for r in p["players"]) or "-"
        over = "  OVER" if p["book_bytes"] > PAGE_BUDGET_BYTES else ""
        print(
            f"{rel:38s} {mb(p['html_bytes'])} {mb(p['image_bytes'])} {frames:>18s} {mb(p['ci_bytes'])} "
            f"{mb(p['book_bytes']):>7s} {p['ratio']:5.2f}{over}"
        )
    largest = max(pages, key=lambda r: pages[r]["book_bytes"])
    print(
        f"largest page under book: {largest}, {mb(pages[largest]['book_bytes']).strip()} MB "
        f"(budget {PAGE_BUDGET_BYTES / 1e6:g} MB)"
    )
    print(
        f"site (one edition, {root.name}/): ci {mb(site_ci).strip()} MB (of which _static/ "
        f"{mb(site['static_bytes']).strip()} MB), book {mb(site_book).strip()} MB ({site['book']}); deployed "
        f"(the book and the student edition{', as built' if student else ', estimated as twice the book'}) "
        f"{mb(site['deployed_book_bytes']).strip()} MB (budget {SITE_BUDGET_BYTES / 1e6:g} MB)"
    )
    for w in warnings:
        print(f"warning: {w}")

    if args.json != "none":
        out = {
            "about": "written by benchmarks/bench_page_size.py from the ci build (and a book build where given); "
            "read by tests/browser/check_book.mjs",
            "budget": {"page_bytes": PAGE_BUDGET_BYTES, "site_bytes": SITE_BUDGET_BYTES},
            "measured": {"command": _command(), "machine": machine(), "date": time.strftime("%Y-%m-%d")},
            "site": site,
            "pages": pages,
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    over = [r for r, p in pages.items() if p["book_bytes"] > PAGE_BUDGET_BYTES]
    return 1 if over or site["deployed_book_bytes"] > SITE_BUDGET_BYTES else 0


def formats(_args) -> int:
    """Bytes per frame of four typical players drawn as viz draws them, in each candidate format."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import torch
    from matplotlib.figure import Figure
    from PIL import Image

    from ddpm_tutor import viz
    from ddpm_tutor.data import toy2d
    from ddpm_tutor.data.images import load_mnist

    g = torch.Generator().manual_seed(0)
    moons = toy2d("moons", 2000, g)
    digits = load_mnist(train=False, download=False)[0][:16]
    u = np.linspace(-2.4, 2.4, 15)
    gx, gy = np.meshgrid(u, u)
    x = np.linspace(-4, 4, 400)

    def scatter(ax):  # the forward chain on two moons (part I.1)
        ax.scatter(moons[:, 0], moons[:, 1], s=4, color="0.75", alpha=0.5, linewidths=0)
        ax.scatter(*(0.8 * moons + 0.6 * torch.randn(moons.shape, generator=g)).T, s=4, alpha=0.6, linewidths=0)

    def quiver(ax):  # a vector field over data (part I.5, the page with most colours)
        ax.scatter(moons[:, 0], moons[:, 1], s=2, color="0.75", linewidths=0)
        ax.quiver(gx, gy, -gx, -gy, angles="xy", scale_units="xy", scale=1, width=0.004, color="C3")

    def lines(ax):  # curves with a legend (part II.1)
        for k, ls in enumerate(["-", "--", ":", "-."]):
            ax.plot(x, np.exp(-((x - 0.2 * k) ** 2) / 2) / 2.5, ls=ls, label=f"curve {k}")
        ax.legend(fontsize="x-small")

    def mnist(ax):  # a grid of digits (part III)
        viz.image_grid(digits.clamp(-1, 1), nrow=8, ax=ax)

    def encoders(rgb):
        def enc(**kw):
            b = io.BytesIO()
            rgb.save(b, **kw)
            return b.getvalue()

        return {
            "PNG, palette (viz)": None,
            "PNG, RGB optimised": enc(format="PNG", optimize=True),
            "JPEG q85": enc(format="JPEG", quality=85),
            "JPEG q95": enc(format="JPEG", quality=95),
            "WebP lossless": enc(format="WEBP", lossless=True),
            "WebP q90": enc(format="WEBP", quality=90),
        }

    print(f"{'player':8s} {'pixels':>9s} {'format':22s} {'KiB/frame':>9s} {'vs matplotlib':>13s} {'max error':>9s}")
    for name, draw, figsize in [
        ("scatter", scatter, (3.4, 3.4)),
        ("quiver", quiver, (3.8, 3.9)),
        ("lines", lines, (5.2, 3.4)),
        ("mnist", mnist, (3.6, 2.2)),
    ]:
        fig = Figure(figsize=figsize, dpi=80, layout="constrained", facecolor=viz.FACECOLOR)
        ax = fig.add_subplot()
        draw(ax)
        ax.set_title("t = 250", fontsize="small")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)  # what matplotlib's HTMLWriter embeds
        png = buf.getvalue()
        ref = Image.open(io.BytesIO(png))
        rgb = ref.convert("RGB")
        a = np.asarray(rgb, dtype=int)
        rows = encoders(rgb)
        rows["PNG, palette (viz)"] = viz.palette_png(png)
        size = f"{ref.width}x{ref.height}"
        print(f"{name:8s} {size:>9s} {'PNG, RGBA (matplotlib)':22s} {len(png) / 1024:9.1f} {1:13.2f} {0:9d}")
        for fmt, data in rows.items():
            err = np.abs(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int) - a).max()
            print(f"{'':8s} {'':9s} {fmt:22s} {len(data) / 1024:9.1f} {len(data) / len(png):13.2f} {err:9d}")
    print("max error: largest channel difference (of 255) from matplotlib's frame")
    return 0


def _command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default="_build_ci/_build/html", help="the ci build (default: %(default)s)")
    parser.add_argument(
        "--json",
        default="benchmarks/page_sizes.json",
        help="where to record the numbers, or none (default: %(default)s)",
    )
    parser.add_argument("--book-html", help="a `make book` build: measure the book's pages there, not estimate them")
    parser.add_argument("--student-html", help="its `make book-student` build: the deployed site as built")
    parser.add_argument("--formats", action="store_true", help="compare frame formats instead (no build needed)")
    args = parser.parse_args()
    print(f"$ {_command()}")
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    rc = formats(args) if args.formats else sizes(args)
    print(f"({time.perf_counter() - t0:.1f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
