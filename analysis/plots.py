"""matplotlib figures (PNG + SVG) of a summary: throughput, latency, GPU timelines, routing balance, CDFs.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`, Agg canvas) so importing this
module never switches the process-wide pyplot backend (a notebook keeps its inline backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

LATENCY_LABELS = {
    "ttft": "Time to first token",
    "tpot": "Time per output token",
    "chunk_gap": "Gap between chunks",
    "e2e": "End-to-end latency",
}
CDF_POINTS = 2000  # points per CDF line at most (the exact extremes are kept)
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def config_colors(configs: Sequence[str]) -> dict[str, str]:
    """Stable colour per config name (sorted), shared by every figure of a report."""
    return {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(sorted(set(configs)))}


def _figure(ncols: int = 1, width: float = 7.0, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
    return fig, axes


def _save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=110)
    # fixed id salt and no timestamp: the same data gives the same SVG bytes (diffable reference results)
    with matplotlib.rc_context({"svg.hashsalt": "expert-router"}):
        fig.savefig(paths[1], metadata={"Date": None})
    return paths


def _note(ax: Axes, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="#555", transform=ax.transAxes)


def _x(frame: pd.DataFrame) -> str:
    """The load column: `load` (users or req/s, docs/CONTRACTS.md) when present, else old-style `users`."""
    return "load" if "load" in frame.columns else "users"


def _x_label(frame: pd.DataFrame) -> str:
    kinds = set(frame["load_kind"]) if "load_kind" in frame.columns else {"users"}
    if kinds == {"rate"}:
        return "Request rate (requests/s)"
    return "Concurrent users" if kinds <= {"users"} else "Load (users or requests/s)"


def _load_text(v: float, frame: pd.DataFrame) -> str:
    kinds = set(frame["load_kind"]) if "load_kind" in frame.columns else {"users"}
    unit = "req/s" if kinds == {"rate"} else "user" if v == 1 else "users"
    return f"{v:g} {unit}"


def _users_axis(ax: Axes, users: Sequence[float], label: str = "Concurrent users") -> None:
    u = sorted({float(x) for x in users if x > 0 and np.isfinite(x)})
    if u and u[-1] / u[0] >= 20:  # 1 .. 1,000 users: a log axis keeps the low steps readable
        ax.set_xscale("log")
    if u:
        ax.set_xticks(u)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(label)
    ax.grid(True, alpha=0.3)


def _ci_err(g: pd.DataFrame, col: str, std_col: str) -> np.ndarray | pd.Series:
    """Asymmetric error bars from `<col>_ci95_lo/_hi` when present, else the std over repetitions."""
    lo, hi = f"{col}_ci95_lo", f"{col}_ci95_hi"
    if lo in g and hi in g and g[lo].notna().any():
        return np.vstack([(g[col] - g[lo]).clip(lower=0).fillna(0), (g[hi] - g[col]).clip(lower=0).fillna(0)])
    return g[std_col] if std_col in g else np.zeros(len(g))


def plot_throughput(summary: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Request and output-token throughput vs load per config (error bars: 95 % CI, else std over reps)."""
    fig, (ax1, ax2) = _figure(2, width=6.0)
    colors = config_colors(summary["config"])
    x = _x(summary)
    tok = "tok_per_s" if "tok_per_s" in summary else "output_tps"
    for config, g in summary.sort_values(x).groupby("config", sort=True):
        c = colors[config]
        ax1.errorbar(g[x], g["throughput_rps"], yerr=g["throughput_rps_std"], color=c, marker="o",
                     capsize=3, label=f"{config} (successful)")  # fmt: skip
        if g["goodput_rps"].notna().any():
            ax1.errorbar(g[x], g["goodput_rps"], yerr=_ci_err(g, "goodput_rps", "_none"), color=c, ls="--",
                         marker="x", capsize=2, label=f"{config} goodput (SLOs)")  # fmt: skip
        ax2.errorbar(g[x], g[tok], yerr=_ci_err(g, tok, f"{tok}_std"), color=c, marker="o", capsize=3,
                     label=config)  # fmt: skip
    ax1.set(title="Request throughput", ylabel="Requests / s")
    ax2.set(title="Output tokens generated in the window (95 % CI)", ylabel="Output tokens / s")
    for ax in (ax1, ax2):
        _users_axis(ax, summary[x], _x_label(summary))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput vs load (measurement window, mean over repetitions)")
    return _save(fig, out_dir, "throughput_vs_users")


def plot_latency(summary: pd.DataFrame, out_dir: str | Path, metric: str = "ttft") -> list[Path]:
    """p50 line per config with a shaded p50–p99 band and p99 markers, vs users."""
    if metric not in LATENCY_LABELS:
        raise ValueError(f"metric must be one of {sorted(LATENCY_LABELS)}, got {metric!r}")
    fig, (ax,) = _figure()
    colors = config_colors(summary["config"])
    x = _x(summary)
    for config, g in summary.sort_values(x).groupby("config", sort=True):
        c = colors[config]
        p50, p99 = g[f"{metric}_p50_ms"], g[f"{metric}_p99_ms"]
        ax.plot(g[x], p50, color=c, marker="o", label=f"{config} p50")
        ax.fill_between(g[x], p50, p99, color=c, alpha=0.15, label=f"{config} p50–p99")
        ax.plot(g[x], p99, color=c, ls=":", marker="v", label=f"{config} p99")
    label = _x_label(summary)
    _users_axis(ax, summary[x], label)
    ax.set_ylim(bottom=0)
    ax.set(ylabel=f"{LATENCY_LABELS[metric]} (ms)", title=f"{LATENCY_LABELS[metric]} vs {label.lower()}")
    ax.legend(fontsize=8, ncols=2)
    return _save(fig, out_dir, f"{metric}_vs_users")


def plot_ttft(summary: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    return plot_latency(summary, out_dir, "ttft")


def plot_e2e(summary: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    return plot_latency(summary, out_dir, "e2e")


def plot_tpot(summary: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    return plot_latency(summary, out_dir, "tpot")


def plot_gpu_timeline(gpu: pd.DataFrame, steps: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """GPU utilisation (mean over GPUs) and memory used (sum over GPUs) over the run; a note when empty."""
    fig, (ax1, ax2) = _figure(2, width=6.0)
    data = gpu.dropna(subset=["ts"]) if len(gpu) else gpu
    if data.empty:
        _note(ax1, "no GPU data\n(no NVML, DCGM or simulated GPU telemetry in gpu.csv)")
        _note(ax2, "no GPU data")
        fig.suptitle("GPU utilisation and memory")
        return _save(fig, out_dir, "gpu_timeline")
    t0 = float(data["ts"].min())
    colors = config_colors(steps["config"] if len(steps) else data["config"])
    labelled: set[str] = set()
    # one line segment per step, so the idle gaps between steps are not drawn as lines
    x = _x(data)
    for (config, _run, users, _rep), g in data.groupby(["config", "run_id", x, "rep"], sort=True):
        per_ts = g.groupby("ts").agg(util=("util_pct", "mean"), mem=("mem_used_mb", "sum")).sort_index()
        t = per_ts.index.to_numpy(dtype=float) - t0
        label = None if config in labelled else config
        labelled.add(config)
        color = colors.get(config, "#333")
        ax1.plot(t, per_ts["util"], color=color, lw=1.2, label=label)
        ax2.plot(t, per_ts["mem"] / 1024.0, color=color, lw=1.2, label=label)
        ax1.text(float(t.mean()), 101, f"{users:g}", ha="center", va="bottom", fontsize=7, color=color)
    ax1.set(title="GPU utilisation (mean over GPUs; labels = load)", ylabel="Utilisation (%)", ylim=(0, 110))
    ax2.set(title="GPU memory used (sum over GPUs)", ylabel="Memory used (GiB)")
    ax2.set_ylim(
        0,
        max(
            1.0,
            float(data.groupby(["run_id", "config", x, "rep", "ts"])["mem_used_mb"].sum().max())
            / 1024
            * 1.15,
        ),
    )
    for ax in (ax1, ax2):
        ax.set_xlabel("Time since first sample (s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    src = sorted(set(data["source"].dropna().astype(str))) if "source" in data else []
    fig.suptitle(f"GPU timelines ({'/'.join(src) or 'NVML'} samples, warm-up included)")
    return _save(fig, out_dir, "gpu_timeline")


def plot_requests_per_expert(balance: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Share of each routed config's requests per expert, one bar group per user count."""
    routed = balance[balance["topology"] == "routed"] if len(balance) else balance
    configs = sorted(routed["config"].unique()) if len(routed) else []
    fig, axes = _figure(max(1, len(configs)), width=6.0 if len(configs) > 1 else 7.0)
    if not configs:
        _note(axes[0], "no routed configuration: nothing to balance")
        return _save(fig, out_dir, "requests_per_expert")
    for ax, config in zip(axes, configs, strict=True):
        g = routed[routed["config"] == config]
        experts = list(dict.fromkeys(g["expert"]))
        col = _x(g)
        users = sorted(g[col].unique())
        width = 0.8 / len(users)
        x = np.arange(len(experts))
        for i, u in enumerate(users):
            share = g[g[col] == u].set_index("expert").reindex(experts)["share"].fillna(0) * 100
            ax.bar(x + (i - (len(users) - 1) / 2) * width, share, width, label=_load_text(float(u), g))
        ax.axhline(100 / len(experts), color="#444", ls="--", lw=1, label="even split")
        ax.set_xticks(x, experts, rotation=30 if len(experts) > 6 else 0)
        ax.set(title=f"Requests per expert: {config}", ylabel="Share of requests (%)", xlabel="Expert")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out_dir, "requests_per_expert")


def plot_latency_cdf(
    df: pd.DataFrame, out_dir: str | Path, metrics: Sequence[str] = ("ttft", "e2e")
) -> list[Path]:
    """Empirical CDFs of successful in-window requests per config × users (colour: config, shade: users)."""
    fig, axes = _figure(len(metrics), width=6.0)
    ok = df[df["in_window"] & df["success"]] if len(df) else df
    if ok.empty:
        for ax in axes:
            _note(ax, "no successful requests")
        return _save(fig, out_dir, "latency_cdf")
    colors = config_colors(ok["config"])
    x = _x(ok)
    users_all = sorted(ok[x].unique())
    for ax, metric in zip(axes, metrics, strict=True):
        col = f"{metric}_s"
        for (config, users), g in ok.groupby(["config", x], sort=True):
            v = np.sort(pd.to_numeric(g[col], errors="coerce").dropna().to_numpy() * 1000.0)
            if not v.size:
                continue
            shade = 0.35 + 0.65 * (users_all.index(users) + 1) / len(users_all)
            ls = "-" if ok.loc[ok["config"] == config, "topology"].iloc[0] == "routed" else "--"
            y = np.arange(1, v.size + 1) / v.size
            if v.size > CDF_POINTS:  # 1,000 users x minutes = 10^5 requests: keep the SVG small
                idx = np.unique(np.linspace(0, v.size - 1, CDF_POINTS).astype(int))
                v, y = v[idx], y[idx]
            ax.step(
                v,
                y,
                where="post",
                color=colors[config],
                alpha=shade,
                ls=ls,
                label=f"{config}, {_load_text(float(users), ok)}",
            )
        ax.set(title=f"{LATENCY_LABELS[metric]} CDF", xlabel=f"{LATENCY_LABELS[metric]} (ms)",
               ylabel="Fraction of requests", ylim=(0, 1.02))  # fmt: skip
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    return _save(fig, out_dir, "latency_cdf")


def plot_all(
    summary: pd.DataFrame,
    records: pd.DataFrame,
    balance: pd.DataFrame,
    gpu: pd.DataFrame,
    steps: pd.DataFrame,
    out_dir: str | Path,
) -> dict[str, list[Path]]:
    """Every figure of the report: name -> [png, svg]."""
    return {
        "throughput_vs_users": plot_throughput(summary, out_dir),
        "ttft_vs_users": plot_ttft(summary, out_dir),
        "e2e_vs_users": plot_e2e(summary, out_dir),
        "tpot_vs_users": plot_tpot(summary, out_dir),
        "gpu_timeline": plot_gpu_timeline(gpu, steps, out_dir),
        "requests_per_expert": plot_requests_per_expert(balance, out_dir),
        "latency_cdf": plot_latency_cdf(records, out_dir),
    }
