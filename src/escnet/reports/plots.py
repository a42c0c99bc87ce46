"""PNG figures (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from escnet.figures import pyplot

plt = pyplot()


def save_logmel(logmel: np.ndarray, path: str | Path, title: str, sample_rate: int,
                hop_length: int) -> None:
    """Write a log-mel ``(n_mels, frames)`` (natural-log power) as a PNG, time in seconds."""
    seconds = logmel.shape[1] * hop_length / sample_rate
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    image = ax.imshow(logmel, origin="lower", aspect="auto", cmap="magma",
                      extent=(0.0, seconds, 0, logmel.shape[0]))
    ax.set(title=title, xlabel="time (s)", ylabel="mel bin")
    fig.colorbar(image, ax=ax, label="log power")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


CATEGORY_COLORS = ("#4477AA", "#66CCEE", "#228833", "#CCBB44", "#EE6677")


def save_curves(histories: dict[str, list[dict]], path: str | Path, title: str) -> None:
    """Training curves: loss and accuracy per epoch, train (dashed) and held-out (solid), a thin
    line per fold and a thick one for the mean over folds (over the epochs all folds reached)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style, color in (("train", "--", "tab:blue"), ("test", "-", "tab:orange")):
            curves = [[h[f"{split}_{metric}"] for h in hist] for hist in histories.values()]
            for curve in curves:
                ax.plot(range(1, len(curve) + 1), curve, style, color=color, alpha=0.3, lw=1)
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            label = f"{'held-out' if split == 'test' else 'train'} (mean of {len(curves)} folds)"
            ax.plot(range(1, n + 1), mean, style, color=color, lw=2.5, label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{title}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_confusion(confusion: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """Confusion matrix (rows: true class, columns: predicted), counts, with class names."""
    n = len(classes)
    side = max(6.0, 0.22 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    image = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_yticks(range(n), classes, fontsize=7 if n > 20 else 9)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.03, label="clips")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_per_class(accuracy: dict[str, float | None], categories: dict[str, str | None],
                   path: str | Path, title: str) -> None:
    """Per-class accuracy bars sorted from worst to best, coloured by major category."""
    from escnet.runs.metrics import ESC50_CATEGORIES

    items = sorted(((a, c) for c, a in accuracy.items() if a is not None))
    colors = [CATEGORY_COLORS[ESC50_CATEGORIES.index(categories[c])] if categories.get(c) else "gray"
              for _, c in items]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(items) + 2), 4.5), dpi=100)
    ax.bar(range(len(items)), [100 * a for a, _ in items], color=colors)
    ax.set_xticks(range(len(items)), [c for _, c in items], rotation=90, fontsize=7)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), title=title)
    used = [k for k in ESC50_CATEGORIES if k in categories.values()]
    if used:
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=CATEGORY_COLORS[ESC50_CATEGORIES.index(k)])
                           for k in used], labels=used, fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_comparison(names: list[str], means: list[float], stds: list[float], path: str | Path) -> None:
    """Mean ± std accuracy (fractions) per run as horizontal bars, best at the top."""
    # Wider for long run names (about 0.07 in per character of label), so the bars keep room.
    width = max(7.0, 4.0 + 0.07 * max(map(len, names)))
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(names) + 1.5), dpi=100)
    y = np.arange(len(names))[::-1]
    ax.barh(y, [100 * m for m in means], xerr=[100 * s for s in stds], color="tab:blue", capsize=4)
    for yi, m, sd in zip(y, means, stds, strict=True):
        ax.text(100 * (m + sd) + 1.5, yi, f"{100 * m:.1f} %", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set(xlabel="accuracy (%), mean ± std over folds", xlim=(0, 100))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_robustness(result: dict, path: str | Path) -> None:
    """Heat map of held-out accuracy (%) by corruption (rows) and severity (columns, mildest
    first), with the clean accuracy in the title; from :func:`escnet.engine.robustness.robustness`."""
    rows = [r for name, r in result["corruptions"].items() if name != "clean"]
    families = list(dict.fromkeys(r["family"] for r in rows))
    width = max(sum(r["family"] == f for r in rows) for f in families)
    grid = np.full((len(families), width), np.nan)
    labels = [["" for _ in range(width)] for _ in families]
    for i, family in enumerate(families):
        for j, r in enumerate(r for r in rows if r["family"] == family):
            grid[i, j] = 100 * r["accuracy"]
            labels[i][j] = f"{r['severity']}\n{100 * r['accuracy']:.1f}"
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * width, 0.9 + 0.55 * len(families)), dpi=100)
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(families)):
        for j in range(width):
            if labels[i][j]:
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(families)), families)
    ax.set_xticks(range(width), [f"severity {k + 1}" for k in range(width)])
    ax.set_title(f"{result['model']}: held-out accuracy (%) under corruption; clean "
                 f"{100 * result['clean']:.1f} %, mean corrupted {100 * result['mean_corrupted']:.1f} %",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, label="accuracy (%)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                     title: str, bins: int = 15) -> None:
    """A reliability diagram: for each named ``(confidence, correct)`` pair of ``(clips,)``
    arrays, the accuracy of the clips in each of ``bins`` equal-width confidence bins against
    their mean confidence (the diagonal: perfectly calibrated), with the share of clips per bin
    below."""
    from escnet.runs.metrics import expected_calibration_error, reliability

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), dpi=100, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    edges = np.linspace(0, 1, bins + 1)
    for (name, (conf, correct)), color in zip(curves.items(), ("tab:grey", "tab:blue"), strict=False):
        mean_conf, acc, count = reliability(conf, correct, bins)
        seen = count > 0
        ece = expected_calibration_error(conf, correct, bins)
        ax.plot(mean_conf[seen], acc[seen], "o-", color=color, label=f"{name} (ECE {ece:.3f})")
        hist.stairs(count / count.sum(), edges, color=color, label=name)
    ax.set(title=title, ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    hist.set(xlabel="confidence (top class probability)", ylabel="share of clips")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_score_histograms(known: np.ndarray, unknown: np.ndarray, thresholds: list[float],
                          path: str | Path, title: str, score: str) -> None:
    """Histograms of an unknown score ``(clips,)`` for clips of known and of unknown classes,
    with the fold models' thresholds (below: answered "unknown")."""
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    bins = np.linspace(min(known.min(), unknown.min()), max(known.max(), unknown.max()), 40)
    ax.hist(known, bins, alpha=0.6, density=True, label=f"known classes ({len(known)} clips)")
    ax.hist(unknown, bins, alpha=0.6, density=True, label=f"unknown classes ({len(unknown)} clips)")
    for i, t in enumerate(thresholds):
        ax.axvline(t, color="black", lw=0.8, ls="--", label="thresholds (per fold)" if i == 0 else None)
    ax.set(title=title, xlabel=f"{score} (higher: more like the training classes)", ylabel="density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
