"""Players (static animations that carry their frames) and live widgets for the book.

Static players
--------------
A player is a small animation with a frame slider and play / step buttons. It is matplotlib's
``to_jshtml`` markup (every frame embedded as an 8-bit palette PNG on an opaque white background), so it
works with no kernel and no network, and in a dark theme: in the published HTML book, in Colab and in
Jupyter. Every player returns a :class:`Player` (an ``IPython.display.HTML``): make it the last expression
of a cell. Nothing else is displayed (the figure used to draw the frames is never shown as a separate PNG).

- :func:`scatter_player` -- 2-D point clouds over time (the forward chain, a sampler's trajectory).
- :func:`image_player` -- batches of images in [-1, 1] over time, drawn as one grid per frame.
- :func:`line_player` -- curves y(x) over time (1-D densities, schedules).
- :func:`player` -- anything: ``draw(ax, i)`` draws frame ``i`` on an empty axes.

Keep players light: at most :data:`MAX_FRAMES` frames (pick them with :func:`pick_frames`) and small
figures; a page of the book downloads every frame of every player on it (budgets: README, "Publishing";
``benchmarks/bench_page_size.py``).

Static helpers: :func:`image_grid` (one grid of images), :func:`pick_frames`, :func:`palette_png` (how frames
are stored).

Live widgets (ipywidgets)
-------------------------
What cannot be precomputed (designing a schedule, a guidance scale) uses ipywidgets sliders, which need
a running kernel: :func:`live_plot` builds one, :func:`live_only_note` shows the note that says so. How
chapters use players and widgets (and the rest of a chapter's conventions) is in CONTRIBUTING.md, "Style".
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from IPython.display import HTML, Markdown
from matplotlib import animation
from matplotlib.figure import Figure

__all__ = [
    "MAX_FRAMES",
    "LIVE_ONLY_NOTE",
    "Player",
    "player",
    "scatter_player",
    "image_player",
    "line_player",
    "image_grid",
    "pick_frames",
    "palette_png",
    "live_only_note",
    "live_plot",
]

MAX_FRAMES = 40
"""Most frames a player may carry (each is a PNG embedded in the page)."""

FRAME_COLORS = 256
"""Colours of a frame's palette. matplotlib writes 32-bit RGBA PNGs; an 8-bit palette (PIL's max-coverage
quantiser, no dithering) made the 175 frames of the ci book 2.9 times smaller (5.67 to 1.96 MiB), every channel
within 12/255 of matplotlib's; ``benchmarks/bench_page_size.py --formats`` compares PNG, JPEG and WebP."""

FACECOLOR = "white"
"""Background of every frame, opaque whatever the rcParams: players stay readable in the theme's dark mode."""

EMBED_LIMIT_MB = 50.0
"""Size a player's markup may reach (matplotlib's default is 20 MB); past it matplotlib drops frames with only
a warning, so players pass this limit to their writer (not through the global rcParams) and check that none
were dropped."""

LIVE_ONLY_NOTE = (
    "The next cell makes interactive controls (ipywidgets). They need a running Python kernel, so they "
    "appear only when you run this chapter in Colab or Jupyter (launch button at the top of the page); "
    "this web page shows the code alone."
)

# matplotlib's player markup loads Font Awesome 4 from a CDN for its button icons. The book must work
# offline, so the link is dropped and each icon is replaced by a plain character.
_CDN_LINK = re.compile(r"<link[^>]*href=\"https?://[^\"]*\"[^>]*>\s*", re.IGNORECASE)
_ICONS = {
    "fa fa-minus": "\u2212",  # slower
    "fa fa-fast-backward": "\u00ab",  # first frame
    "fa fa-step-backward": "\u2039",  # previous frame
    "fa fa-play fa-flip-horizontal": "\u25c0",  # play backwards
    "fa fa-pause": "\u275a\u275a",  # pause
    "fa fa-play": "\u25b6",  # play
    "fa fa-step-forward": "\u203a",  # next frame
    "fa fa-fast-forward": "\u00bb",  # last frame
    "fa fa-plus": "+",  # faster
}
# matplotlib sizes a player for a desktop: an inline-block as wide as its widest part (a 374 px slider), which a
# phone's column cuts off. Let it shrink to its column instead: the frame scales down and the buttons wrap.
_FIT_CSS = (
    "<style>\n.animation { max-width: 100%; }\n.animation img { max-width: 100%; height: auto; }\n"
    "input[type=range].anim-slider { max-width: 100%; }\n</style>\n"
)
_FRAME = re.compile(r"frames\[(\d+)\]\s*=\s*\"data:image/")
_PNG_FRAME = re.compile(r"(frames\[\d+\]\s*=\s*\")data:image/png;base64,([^\"]*)\"")


class Player(HTML):
    """An ``IPython.display.HTML`` holding one player's markup, with its frame count and labels."""

    def __init__(self, html: str, n_frames: int, labels: Sequence[str]):
        super().__init__(html)
        self.n_frames = n_frames
        self.labels = list(labels)

    def __repr__(self) -> str:
        return f"<Player: {self.n_frames} frames>"


def _check_labels(labels: Sequence[str] | None, n_frames: int) -> list[str]:
    if labels is None:
        return [f"frame {i + 1} of {n_frames}" for i in range(n_frames)]
    if isinstance(labels, str):
        raise ValueError("labels must be a list of strings, one per frame, got a single string")
    labels = [str(label) for label in labels]
    if len(labels) != n_frames:
        raise ValueError(f"labels must have one entry per frame: {n_frames} frames, got {len(labels)} labels")
    return labels


def _check_n_frames(n_frames: int, max_frames: int) -> int:
    if not isinstance(n_frames, (int, np.integer)) or isinstance(n_frames, bool) or n_frames < 1:
        raise ValueError(f"a player needs a positive whole number of frames, got {n_frames!r}")
    if n_frames > max_frames:
        raise ValueError(
            f"a player may carry at most {max_frames} frames (each is an image in the page), got {n_frames}; "
            "choose fewer with ddpm_tutor.viz.pick_frames"
        )
    return int(n_frames)


def _offline_markup(html: str) -> str:
    html = _CDN_LINK.sub("", html)
    for icon, char in _ICONS.items():
        html = html.replace(f'<i class="{icon}"></i>', f'<span aria-hidden="true">{char}</span>')
    return html


def _fit_column(html: str) -> str:
    return html.replace('<div class="animation">', _FIT_CSS + '<div class="animation">', 1)


def palette_png(png: bytes, colors: int = FRAME_COLORS) -> bytes:
    """A PNG re-encoded as an opaque 8-bit palette PNG of at most ``colors`` colours (alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    if not 2 <= colors <= 256:
        raise ValueError(f"colors must be between 2 and 256 (an 8-bit palette), got {colors}")
    try:
        im = Image.open(io.BytesIO(png))
    except UnidentifiedImageError as err:
        raise ValueError("palette_png needs PNG bytes, got bytes that are no image") from err
    with im:
        if im.format != "PNG":
            raise ValueError(f"palette_png needs PNG bytes, got {im.format}")
        rgb = im.convert("RGB")  # frames are drawn on an opaque figure: alpha is 255 everywhere
    # max coverage: on the book's frames its largest error was 12/255, median cut's 88 (a few coloured pixels
    # merged into grey); dithering would only add noise that compresses badly
    pal = rgb.quantize(colors=colors, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    pal.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _palette_frames(html: str) -> str:
    def encode(m: re.Match) -> str:
        png = palette_png(base64.b64decode(m.group(2).replace("\\\n", "")))  # matplotlib wraps base64 lines
        return f'{m.group(1)}data:image/png;base64,{base64.b64encode(png).decode("ascii")}"'

    return _PNG_FRAME.sub(encode, html)


def player(
    draw: Callable,
    n_frames: int,
    labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (3.6, 3.2),
    dpi: int = 80,
    interval_ms: int = 250,
    loop: bool = False,
    max_frames: int = MAX_FRAMES,
) -> Player:
    """A player of ``n_frames`` frames; ``draw(ax, i)`` draws frame ``i`` onto an empty axes.

    ``labels[i]`` (e.g. ``"t = 250"``) is the axes' title of frame ``i``; ``title`` is the figure's
    title, the same on every frame. Returns a :class:`Player` to display.
    """
    n_frames = _check_n_frames(n_frames, max_frames)
    labels = _check_labels(labels, n_frames)
    if not callable(draw):
        raise ValueError(f"draw must be a function draw(ax, i), got {type(draw).__name__}")
    if interval_ms <= 0:
        raise ValueError(f"interval_ms must be positive, got {interval_ms}")

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained", facecolor=FACECOLOR)
    ax = fig.add_subplot()
    if title:
        fig.suptitle(title, fontsize="medium")

    def update(i):
        ax.clear()
        draw(ax, i)
        ax.set_title(labels[i], fontsize="small")
        return []

    anim = animation.FuncAnimation(fig, update, frames=n_frames, interval=interval_ms, blit=False, repeat=loop)
    limit = max(EMBED_LIMIT_MB, float(matplotlib.rcParams["animation.embed_limit"]))  # a larger global one wins
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "player.html")
        writer = animation.HTMLWriter(
            fps=1000.0 / interval_ms, embed_frames=True, default_mode="loop" if loop else "once", embed_limit=limit
        )
        anim.save(str(path), writer=writer, dpi=dpi, savefig_kwargs={"facecolor": FACECOLOR, "transparent": False})
        html = path.read_text()
    found = len(_FRAME.findall(html))
    if found != n_frames:
        raise RuntimeError(
            f"the player holds {found} of its {n_frames} frames: the size limit of its markup ({limit:g} MB) "
            "was reached; use fewer or smaller frames"
        )
    return Player(_palette_frames(_fit_column(_offline_markup(html))), n_frames, labels)


def _as_numpy(x, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite, got NaN or inf")
    return arr


def _limits(lims, clouds: list[np.ndarray]):
    if lims is None:
        pts = np.concatenate(clouds, axis=0)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = 0.05 * np.maximum(hi - lo, 1e-6)
        return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])
    if isinstance(lims, (int, float, np.integer, np.floating)) and not isinstance(lims, bool):
        if lims <= 0:
            raise ValueError(f"lims as one number L means [-L, L] on both axes and must be positive, got {lims}")
        return (-float(lims), float(lims)), (-float(lims), float(lims))
    try:
        (x0, x1), (y0, y1) = lims
    except (TypeError, ValueError) as err:
        raise ValueError("lims must be None, a number L, or ((xmin, xmax), (ymin, ymax))") from err
    return (float(x0), float(x1)), (float(y0), float(y1))


def scatter_player(
    frames: Sequence,
    labels: Sequence[str] | None = None,
    *,
    lims=None,
    title: str | None = None,
    reference=None,
    interval_ms: int = 250,
    s: float = 4.0,
    color: str = "C0",
    alpha: float = 0.6,
    figsize: tuple[float, float] = (3.4, 3.4),
    dpi: int = 80,
    loop: bool = False,
) -> Player:
    """A player of 2-D point clouds: ``frames[i]`` is an (N, 2) tensor or array.

    ``lims``: ``None`` (fit all frames, the same on every frame), a number L ([-L, L] on both axes) or
    ``((xmin, xmax), (ymin, ymax))``. ``reference``: optional (M, 2) points (e.g. the data) drawn faded
    behind every frame.
    """
    if isinstance(frames, (np.ndarray,)) and frames.ndim == 3:
        frames = list(frames)
    frames = [_as_numpy(f, "every frame") for f in frames]
    for i, f in enumerate(frames):
        if f.ndim != 2 or f.shape[1] != 2:
            raise ValueError(f"scatter_player: every frame must have shape (N, 2), frame {i} has {f.shape}")
    ref = None
    if reference is not None:
        ref = _as_numpy(reference, "reference")
        if ref.ndim != 2 or ref.shape[1] != 2:
            raise ValueError(f"scatter_player: reference must have shape (M, 2), got {ref.shape}")
    _check_n_frames(len(frames), MAX_FRAMES)
    xlim, ylim = _limits(lims, frames + ([ref] if ref is not None else []))

    def draw(ax, i):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=s, color="0.75", alpha=0.5, linewidths=0)
        ax.scatter(frames[i][:, 0], frames[i][:, 1], s=s, color=color, alpha=alpha, linewidths=0)
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
        ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelsize="x-small")

    return player(draw, len(frames), labels, title=title, figsize=figsize, dpi=dpi, interval_ms=interval_ms, loop=loop)


def _check_images(x, what: str = "images") -> torch.Tensor:  # noqa: F821
    import torch

    from .checks import image_range  # here, like torch: importing viz does not import torch

    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    x = x.detach().to("cpu", torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have shape (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    return image_range(x, what)


def image_grid(x, nrow: int = 8, *, ax=None, padding: int = 2, title: str | None = None) -> np.ndarray:
    """One grid of images: ``x`` is (B, C, H, W) (or (C, H, W)) in [-1, 1], C = 1 or 3.

    Returns the grid as an (H', W', 3) float array in [0, 1]; draws it on ``ax`` (axis off) when given.
    Values outside [-1, 1] raise ``ValueError``.
    """
    from torchvision.utils import make_grid

    if nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    x = _check_images(x)
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=padding, pad_value=1.0)
    arr = grid.permute(1, 2, 0).numpy().clip(0.0, 1.0)  # guards float rounding only: inputs were checked
    if ax is not None:
        ax.imshow(arr, interpolation="nearest")
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize="small")
    return arr


def image_player(
    frames: Sequence,
    labels: Sequence[str] | None = None,
    *,
    nrow: int = 8,
    title: str | None = None,
    interval_ms: int = 300,
    figsize: tuple[float, float] | None = None,
    dpi: int = 80,
    loop: bool = False,
) -> Player:
    """A player of image batches: ``frames[i]`` is a (B, C, H, W) tensor in [-1, 1], drawn as one grid.

    Values outside [-1, 1] raise ``ValueError`` (x_t of the forward or reverse chain leaves that range:
    clip it explicitly with ``x.clamp(-1, 1)``, or show the predicted x_0).
    """
    _check_n_frames(len(frames), MAX_FRAMES)
    grids = [image_grid(f, nrow=nrow) for f in frames]
    shapes = {g.shape for g in grids}
    if len(shapes) != 1:
        raise ValueError(f"image_player: every frame must give the same grid, got grid shapes {sorted(shapes)}")
    h, w, _ = grids[0].shape
    if figsize is None:
        scale = 3.6 / max(h, w)
        figsize = (max(w * scale, 1.5), max(h * scale, 1.5) + 0.4)

    def draw(ax, i):
        ax.imshow(grids[i], interpolation="nearest")
        ax.set_axis_off()

    return player(draw, len(grids), labels, title=title, figsize=figsize, dpi=dpi, interval_ms=interval_ms, loop=loop)


def line_player(
    x,
    frames: Sequence,
    labels: Sequence[str] | None = None,
    *,
    reference=None,
    ylim=None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    interval_ms: int = 250,
    figsize: tuple[float, float] = (4.0, 2.8),
    dpi: int = 80,
    loop: bool = False,
) -> Player:
    """A player of curves: frame ``i`` draws ``frames[i]`` against ``x``.

    ``frames[i]`` is a 1-D array of ``len(x)`` values, or a 2-D (K, len(x)) array of K curves.
    ``reference``: an optional curve (1-D, ``len(x)``) drawn dashed on every frame. ``ylim`` defaults to
    the range of all frames, the same on every frame.
    """
    xs = _as_numpy(x, "x")
    if xs.ndim != 1:
        raise ValueError(f"line_player: x must be 1-D, got shape {xs.shape}")
    ys = [np.atleast_2d(_as_numpy(f, "every frame")) for f in frames]
    for i, y in enumerate(ys):
        if y.ndim != 2 or y.shape[1] != xs.shape[0]:
            raise ValueError(f"line_player: frame {i} must have {xs.shape[0]} values per curve, got {y.shape}")
    ref = None
    if reference is not None:
        ref = _as_numpy(reference, "reference")
        if ref.shape != xs.shape:
            raise ValueError(f"line_player: reference must have shape {xs.shape}, got {ref.shape}")
    _check_n_frames(len(ys), MAX_FRAMES)
    if ylim is None:
        allv = np.concatenate([y.ravel() for y in ys] + ([ref] if ref is not None else []))
        lo, hi = allv.min(), allv.max()
        pad = 0.05 * max(hi - lo, 1e-6)
        ylim = (lo - pad, hi + pad)

    def draw(ax, i):
        if ref is not None:
            ax.plot(xs, ref, "--", color="0.5", lw=1)
        for k, y in enumerate(ys[i]):
            ax.plot(xs, y, color=f"C{k}", lw=1.5)
        ax.set_xlim(xs.min(), xs.max())
        ax.set_ylim(ylim)
        if xlabel:
            ax.set_xlabel(xlabel, fontsize="small")
        if ylabel:
            ax.set_ylabel(ylabel, fontsize="small")
        ax.tick_params(labelsize="x-small")

    return player(draw, len(ys), labels, title=title, figsize=figsize, dpi=dpi, interval_ms=interval_ms, loop=loop)


def pick_frames(seq: Sequence, n: int = 20) -> list:
    """``n`` evenly spaced items of ``seq``, always including its first and last (all of it if shorter)."""
    seq = list(seq)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if len(seq) <= n:
        return seq
    if n == 1:
        return [seq[-1]]
    idx = np.unique(np.round(np.linspace(0, len(seq) - 1, n)).astype(int))
    return [seq[i] for i in idx]


def live_only_note() -> Markdown:
    """The live-only note as Markdown output (the book itself puts it in a ``:::{note}`` Markdown cell)."""
    return Markdown(f"**Live only.** {LIVE_ONLY_NOTE}")


def live_plot(draw: Callable, *, figsize: tuple[float, float] = (4.5, 3.0), **controls):
    """A live plot: ipywidgets controls, and ``draw(ax, **values)`` redrawn whenever one moves.

    ``controls`` are ipywidgets (``FloatSlider(...)``) or ``interact`` abbreviations (``(0.0, 1.0, 0.01)``).
    Returns the widget (make it the last expression of the cell). Live only: tag the cell
    ``remove-output`` and put the live-only note before it.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def update(**values):
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        draw(ax, **values)
        if "inline" in matplotlib.get_backend().lower():
            plt.show()
        plt.close(fig)

    for control in controls.values():
        if hasattr(control, "continuous_update"):
            control.continuous_update = False  # redraw when a slider is released, not on every pixel
    return widgets.interactive(update, **controls)
