"""ddpm_tutor.viz: players carry exactly their frames, work offline, and refuse bad input clearly."""

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import frames_in, png_bytes  # noqa: E402
from IPython.display import HTML, Markdown  # noqa: E402

from ddpm_tutor import viz  # noqa: E402


def _clouds(n_frames, n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 2, generator=g) * (1 + k) for k in range(n_frames)]


def _images(n_frames, b=4, c=1, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, c, hw, hw, generator=g) * 2 - 1 for _ in range(n_frames)]


def test_scatter_player_carries_one_png_per_frame_and_is_offline():
    p = viz.scatter_player(_clouds(5), [f"t = {k}" for k in range(5)], reference=torch.zeros(10, 2), title="x")
    assert isinstance(p, HTML) and isinstance(p, viz.Player)
    assert p.n_frames == 5 and p.labels == [f"t = {k}" for k in range(5)]
    assert frames_in(p) == 5
    html = p.data
    assert 'class="animation"' in html and 'title="Next frame"' in html
    assert png_bytes(html, 4)[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing fetched from the network: matplotlib's Font Awesome CDN link and icons are gone
    assert "http://" not in html and "https://" not in html
    assert "fa fa-" not in html
    # the player may shrink to a phone's column (tests/browser checks it is then usable at 390 px)
    assert html.index("max-width: 100%") < html.index('<div class="animation">')


def test_frames_differ_and_labels_default():
    p = viz.scatter_player(_clouds(3), lims=5.0)
    assert p.labels == ["frame 1 of 3", "frame 2 of 3", "frame 3 of 3"]
    assert png_bytes(p.data, 0) != png_bytes(p.data, 2)


def test_players_leave_no_open_figure():
    before = plt.get_fignums()
    viz.scatter_player(_clouds(2))
    viz.image_player(_images(2))
    assert plt.get_fignums() == before


def test_player_calls_draw_for_every_frame():
    seen = []

    def draw(ax, i):
        seen.append(i)
        ax.plot([0, 1], [0, i])

    p = viz.player(draw, 4, ["a", "b", "c", "d"])
    assert frames_in(p) == 4
    assert sorted(set(seen)) == [0, 1, 2, 3]


def test_line_player_counts_frames_and_checks_lengths():
    x = np.linspace(-3, 3, 50)
    p = viz.line_player(x, [np.exp(-(x**2) / (1 + k)) for k in range(3)], ["a", "b", "c"], reference=np.exp(-(x**2)))
    assert frames_in(p) == 3
    with pytest.raises(ValueError, match="values per curve"):
        viz.line_player(x, [np.zeros(49)])


def test_image_player_frames_and_channels():
    p = viz.image_player(_images(3, c=1), ["t = 1000", "t = 500", "t = 1"], nrow=2)
    assert frames_in(p) == 3
    p3 = viz.image_player(_images(2, c=3), nrow=4)
    assert frames_in(p3) == 2


@pytest.mark.parametrize("bad", [1.01, -1.2, 3.0])
def test_image_player_refuses_data_outside_minus_one_one(bad):
    frames = _images(2)
    frames[1][0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        viz.image_player(frames)


def test_image_checks_nan_and_shape():
    x = _images(1)[0]
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        viz.image_grid(x)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        viz.image_grid(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="same grid"):
        viz.image_player([torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 9, 9)])


def test_image_grid_maps_range_and_layout():
    x = torch.full((4, 1, 28, 28), -1.0)
    x[1] = 1.0
    grid = viz.image_grid(x, nrow=2, padding=2)
    assert grid.shape == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2, 3)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    assert np.allclose(grid[2:30, 2:30], 0.0)  # image 0 = -1 -> black
    assert np.allclose(grid[2:30, 32:60], 1.0)  # image 1 = +1 -> white
    fig, ax = plt.subplots()
    out = viz.image_grid(x, nrow=2, ax=ax, title="grid")
    assert len(ax.images) == 1 and np.array_equal(out, grid)
    plt.close(fig)


def test_bad_player_arguments():
    with pytest.raises(ValueError, match="one entry per frame"):
        viz.scatter_player(_clouds(3), ["only one"])
    with pytest.raises(ValueError, match="at most"):
        viz.scatter_player(_clouds(viz.MAX_FRAMES + 1, n=3))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.scatter_player([torch.zeros(5, 3)])
    with pytest.raises(ValueError, match="finite"):
        viz.scatter_player([torch.tensor([[float("nan"), 0.0]])])
    with pytest.raises(ValueError, match="positive whole number"):
        viz.player(lambda ax, i: None, 0)
    with pytest.raises(ValueError, match="single string"):
        viz.player(lambda ax, i: None, 1, "t = 1")
    with pytest.raises(ValueError, match="lims"):
        viz.scatter_player(_clouds(1), lims="wide")


def test_pick_frames():
    assert viz.pick_frames(range(5), 10) == [0, 1, 2, 3, 4]
    picked = viz.pick_frames(range(1000), 20)
    assert len(picked) == 20 and picked[0] == 0 and picked[-1] == 999
    assert picked == sorted(picked)
    assert viz.pick_frames(range(10), 1) == [9]
    with pytest.raises(ValueError):
        viz.pick_frames(range(10), 0)


def test_importing_viz_leaves_matplotlib_settings_alone():
    code = (
        "import matplotlib; before = dict(matplotlib.rcParams); import ddpm_tutor.viz; "
        "changed = sorted(k for k, v in matplotlib.rcParams.items() if before[k] != v); "
        "assert not changed, changed"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_players_keep_every_frame_whatever_the_global_embed_limit():
    # a global limit far below one frame's size: the player passes its own limit to the writer instead
    with matplotlib.rc_context({"animation.embed_limit": 1e-4}):
        p = viz.scatter_player(_clouds(3))
        assert frames_in(p) == 3
        assert float(matplotlib.rcParams["animation.embed_limit"]) == 1e-4


def test_live_only_note_and_live_plot():
    note = viz.live_only_note()
    assert isinstance(note, Markdown) and "Live only" in note.data and "Colab" in note.data

    import ipywidgets as widgets

    seen = []

    def draw(ax, a):
        seen.append(a)
        ax.plot([0, 1], [0, a])

    slider = widgets.FloatSlider(value=0.5, min=0.0, max=1.0)
    ui = viz.live_plot(draw, a=slider)
    assert isinstance(ui, widgets.interactive)
    assert seen == [0.5] and slider.continuous_update is False
    slider.value = 0.25
    assert seen[-1] == 0.25


def _draw_demo(ax, i):
    g = np.random.default_rng(i)
    ax.scatter(*g.normal(size=(2, 300)), s=4, alpha=0.5, color="C0", linewidths=0)
    ax.plot(np.linspace(-2, 2, 50), np.sin(np.linspace(-2, 2, 50) * (i + 1)), color="C3")


def test_frames_are_palette_pngs_close_to_matplotlibs_own_rendering():
    import io

    from PIL import Image

    figsize, dpi = (3.0, 2.6), 80
    p = viz.player(_draw_demo, 2, ["a", "b"], title="demo", figsize=figsize, dpi=dpi)
    # the same frame drawn by matplotlib alone, as its HTMLWriter would save it (32-bit RGBA)
    fig = matplotlib.figure.Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle("demo", fontsize="medium")
    _draw_demo(ax, 1)
    ax.set_title("b", fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    ref = Image.open(buf)
    got = Image.open(io.BytesIO(png_bytes(p.data, 1)))
    assert ref.mode == "RGBA" and got.mode == "P" and "transparency" not in got.info
    assert got.size == ref.size == (240, 208)
    diff = np.abs(np.asarray(got.convert("RGB"), dtype=int) - np.asarray(ref.convert("RGB"), dtype=int))
    assert diff.max() <= 16, diff.max()  # 256 colours are enough for a plot: no visible change
    assert len(png_bytes(p.data, 1)) < len(buf.getvalue()) / 2


def test_frames_stay_opaque_white_under_a_dark_or_transparent_style():
    import io

    from PIL import Image

    dark = {"figure.facecolor": "black", "savefig.facecolor": "black", "savefig.transparent": True}
    with matplotlib.rc_context(dark):
        p = viz.scatter_player(_clouds(2), lims=5.0)
    im = Image.open(io.BytesIO(png_bytes(p.data, 0))).convert("RGBA")
    corners = [im.getpixel(xy) for xy in [(0, 0), (im.width - 1, 0), (0, im.height - 1), (im.width - 1, im.height - 1)]]
    assert corners == [(255, 255, 255, 255)] * 4


def test_palette_png_refuses_other_images_and_palette_sizes():
    import io

    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(jpeg, format="JPEG")
    with pytest.raises(ValueError, match="PNG"):
        viz.palette_png(jpeg.getvalue())
    with pytest.raises(ValueError, match="no image"):
        viz.palette_png(b"not an image")
    png = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(png, format="PNG")
    with pytest.raises(ValueError, match="colors must be between 2 and 256"):
        viz.palette_png(png.getvalue(), colors=300)
    # an image of at most 256 colours goes through the palette unchanged
    rgb = np.random.default_rng(0).integers(0, 4, size=(16, 16, 3)).astype(np.uint8) * 80
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    back = np.asarray(Image.open(io.BytesIO(viz.palette_png(png.getvalue()))).convert("RGB"))
    assert np.array_equal(back, rgb)
