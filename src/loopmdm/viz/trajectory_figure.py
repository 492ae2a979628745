"""A sampling trajectory as a figure for papers and READMEs: a strip of frames (``.png/.svg/.pdf``) or a ``.gif``.

Each frame shows one sample's sequence after step k of T: tokens on a background coloured by the step at
which they were revealed (viridis, early = dark), given prompt/template tokens grey, masks as ``░``.
The strip ends with the loops S spent per step and the cumulative FLOPs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from .events import cumulative_flops, loops_value  # noqa: E402
from .snapshots import require_trajectory, step_snapshots  # noqa: E402

MASK_GLYPH = "░"
GIVEN = "#d9dee4"
MASKED = "#e9ecef"
KEY = "   (colour: step of reveal, dark = early, yellow = late; grey = given; dotted = masked)"


def clean_piece(piece: str) -> str:
    """Printable text of a token piece: tabs as spaces, other control bytes as U+FFFD (newlines kept)."""
    piece = piece.replace("\t", "    ")
    return "".join(c if c == "\n" or c.isprintable() else "\ufffd" for c in piece)


def token_lines(pieces: list[str], width: int) -> list[list[tuple[int, int, int, str]]]:
    """Lay out token pieces in a monospace grid ``width`` characters wide:
    lines of (token index, column, cells, text); a newline inside a piece starts a new line."""
    lines: list[list[tuple[int, int, int, str]]] = [[]]
    col = 0
    for idx, piece in enumerate(pieces):
        chunks = clean_piece(piece).split("\n")
        for c, chunk in enumerate(chunks):
            text = chunk + ("↵" if c < len(chunks) - 1 else "")
            if text:
                if col + len(text) > width and col > 0:
                    lines.append([])
                    col = 0
                lines[-1].append((idx, col, len(text), text))
                col += len(text)
            if c < len(chunks) - 1:
                lines.append([])
                col = 0
    return lines


def draw_frame(
    ax, lines, reveal: list[int], shown: list[bool], total_steps: int, width: int, title: str
) -> None:
    """Draw one frame of the laid-out final sequence: token k coloured by its 0-based reveal step reveal[k]
    (-1 = given) when shown[k],
    else a grey mask box. Masked tokens keep the width of the token that fills them, so nothing moves
    between frames."""
    cmap = plt.get_cmap("viridis")
    fig = ax.figure
    cell_px = ax.get_window_extent().width / width
    fontsize = max(4.0, min(10.0, cell_px / 0.602 * 72 / fig.dpi))
    # columns that fit at this size
    cells = ax.get_window_extent().width / (0.602 * fontsize * fig.dpi / 72)
    ax.set_xlim(0, max(width, cells))
    ax.set_ylim(max(len(lines), 1), 0)
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=9, color="#495057")
    for row, line in enumerate(lines):
        for idx, col, n_cells, text in line:
            if not shown[idx]:
                face, ink, text = MASKED, "#adb5bd", MASK_GLYPH * n_cells
            elif reveal[idx] == -1:
                face, ink = GIVEN, "#343a40"
            else:
                face = cmap(reveal[idx] / max(total_steps - 1, 1))
                ink = (
                    "#1f2933"
                    if 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2] > 0.6
                    else "white"
                )
            ax.add_patch(
                Rectangle(
                    (col + 0.05, row + 0.1), n_cells - 0.1, 0.8, facecolor=face, edgecolor="none"
                )
            )
            ax.text(
                col,
                row + 0.52,
                text,
                family="DejaVu Sans Mono",
                fontsize=fontsize,
                va="center",
                ha="left",
                color=ink,
            )


def si_flops(x: float) -> str:
    """1.5e8 -> '150M' (axis labels)."""
    for scale, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _frame_steps(total: int, frames: int) -> list[int]:
    if total <= frames:
        return list(range(1, total + 1))
    return sorted({max(1, round(total * (j + 1) / frames)) for j in range(frames)})


def _chart(ax, loops: list[float], cum: list[float]) -> None:
    steps = list(range(1, len(loops) + 1))
    ax.plot(
        steps, loops, "o-", color="#3b5bdb", markersize=3, linewidth=1.3, label="loops S per step"
    )
    ax.set_xlabel("denoising step")
    ax.set_ylabel("loops S", color="#3b5bdb")
    ax.set_ylim(0, max(loops + [1]) * 1.15)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, cum, "--", color="#e8590c", linewidth=1.3, label="cumulative FLOPs")
    ax2.set_ylabel("cumulative FLOPs", color="#e8590c")
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si_flops(v)))
    ax.legend(handles=ax.get_lines() + ax2.get_lines(), loc="upper left", fontsize=8, frameon=False)


def write_trajectory_figure(
    output, tokenizer, path: str | Path, *, sample: int = 0, frames: int = 6, width: int = 64
) -> Path:
    """Write sample ``sample``'s trajectory: ``.gif`` = one frame per step; otherwise a strip of ``frames``
    frames (steps evenly spaced up to T) above the loops/FLOPs chart."""
    traj = require_trajectory(output)
    path = Path(path)
    n = output.tokens.shape[0]
    if not 0 <= sample < n:
        raise ConfigError(f"sample {sample} out of range: the output has {n} sample(s)")
    snaps = step_snapshots(output, tokenizer.mask_id)
    total = len(snaps)
    final = output.tokens[sample].tolist()
    reveal = traj.reveal_step[sample].tolist()
    lines = token_lines([tokenizer.decode([i], skip_special=False) for i in final], width)
    n_lines = len(lines)
    # font size follows the widest line
    cols = max([48] + [col + cells for line in lines for _, col, cells, _ in line])
    path.parent.mkdir(parents=True, exist_ok=True)
    shown_at = lambda k: [bool(x) for x in (snaps[k - 1][sample] != tokenizer.mask_id).tolist()]  # noqa: E731
    line_h = 0.26
    if path.suffix.lower() == ".gif":
        from matplotlib.animation import FuncAnimation, PillowWriter

        fig, ax = plt.subplots(figsize=(8, 0.5 + line_h * n_lines), dpi=100)
        fig.subplots_adjust(left=0.02, right=0.98, top=0.85, bottom=0.02)

        def update(k: int):
            ax.clear()
            draw_frame(ax, lines, reveal, shown_at(k), total, cols, f"step {k} / {total}")
            return []

        anim = FuncAnimation(fig, update, frames=range(1, total + 1), blit=False)
        anim.save(str(path), writer=PillowWriter(fps=max(2, min(12, total // 4))))
        plt.close(fig)
        return path
    ks = _frame_steps(total, frames)
    heights = [0.3 + line_h * n_lines] * len(ks) + [2.4]
    fig, axes = plt.subplots(
        len(ks) + 1,
        1,
        figsize=(8, sum(heights)),
        dpi=150,
        gridspec_kw={
            "height_ratios": heights,
            "left": 0.08,
            "right": 0.9,
            "top": 0.98,
            "bottom": 0.06,
            "hspace": 0.3,
        },
    )
    for j, (ax, k) in enumerate(zip(axes, ks)):
        key = KEY if j == 0 else ""
        draw_frame(ax, lines, reveal, shown_at(k), total, cols, f"after step {k} / {total}{key}")
    _chart(
        axes[-1],
        [loops_value(x) for x in traj.loops_per_step],
        cumulative_flops(traj, output.report),
    )
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
