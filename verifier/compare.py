"""Comparing domains and models: the certify runs of every (model, eps) summed up as rows, a table and a plot."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

from nncert.verifier.results import text_table


def model_labels(paths: list[str]) -> list[str]:
    """Short unique names: the file stem, or ``folder/stem`` where stems repeat (e.g. RUN/model.onnx)."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{Path(p).parent.name}/{s}" for p, s in zip(paths, stems)]


def comparison_rows(runs: list[dict], domains: list[str]) -> list[dict]:
    """One row per (model, eps, domain) from runs ``{"model": label, "eps": text, "summary": {domain: ...}}``;
    a run that failed (``{"model", "eps", "error": reason}``) gets a row per domain with its reason."""
    rows = []
    for run in runs:
        if "error" in run:
            rows += [{"model": run["model"], "eps": run["eps"], "domain": domain, "error": run["error"]}
                     for domain in domains]
            continue
        for domain, s in run["summary"].items():
            n = max(s["n"], 1)
            rows.append({"model": run["model"], "eps": run["eps"], "domain": domain, "n": s["n"],
                         "natural": s["natural"] / n, "certified": s["certified"] / n, "falsified": s["falsified"],
                         "unknown": s["unknown"], "timeout": s["timeout"], "mean_time_s": s["mean_time_s"]})
    return rows


def comparison_table(rows: list[dict], markdown: bool = False) -> str:
    """The rows as a markdown table (``markdown``) or as aligned plain text for the terminal."""
    header = ("model", "eps", "domain", "n", "natural", "certified", "falsified", "unknown", "timeout", "mean s")
    cells = [(r["model"], r["eps"], r["domain"], *_cells(r)) for r in rows]
    if not markdown:
        return text_table(header, cells)
    return "\n".join(["| " + " | ".join(line) + " |" for line in [header, ("---",) * len(header), *cells]]) + "\n"


def _cells(row: dict) -> tuple[str, ...]:
    """The row's numbers, or ``error`` where its run failed."""
    if "error" in row:
        return ("-", "-", "error", "-", "-", "-", "-")
    return (str(row["n"]), f"{100 * row['natural']:.1f}%", f"{100 * row['certified']:.1f}%", str(row["falsified"]),
            str(row["unknown"]), str(row["timeout"]), f"{row['mean_time_s']:.3f}")


def plot(rows: list[dict], path: str | os.PathLike) -> None:
    """Certified accuracy per domain, grouped by model (one panel per eps), or over eps when several are given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    eps_values = list(dict.fromkeys(r["eps"] for r in rows))
    value = {(r["model"], r["eps"], r["domain"]): 100 * r["certified"] for r in rows}
    natural = {(r["model"], r["eps"]): 100 * r["natural"] for r in rows}
    if len(eps_values) == 1:
        fig, ax = plt.subplots(figsize=(1.8 + 1.2 * len(models) * len(domains) / 2, 4))
        width = 0.8 / len(domains)
        for j, domain in enumerate(domains):
            xs = [i + (j - (len(domains) - 1) / 2) * width for i in range(len(models))]
            bars = ax.bar(xs, [value.get((m, eps_values[0], domain), 0) for m in models], width, label=domain)
            ax.bar_label(bars, fmt="%.1f", fontsize="small", label_type="center", color="white")
        ax.hlines([natural.get((m, eps_values[0]), 0) for m in models], [i - 0.45 for i in range(len(models))],
                  [i + 0.45 for i in range(len(models))], colors="black", linestyles="dashed",
                  label="natural accuracy", zorder=3)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"eps = {eps_values[0]}")
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [float(Fraction(e)) for e in eps_values]
        styles = ["-", "--", ":", "-."]
        for i, m in enumerate(models):
            for j, domain in enumerate(domains):
                ax.plot(xs, [value.get((m, e, domain), float("nan")) for e in eps_values], marker="o",
                        color=f"C{i}", linestyle=styles[j % len(styles)],
                        label=f"{m} {domain}" if len(models) > 1 else domain)
        ax.set_xlabel("eps")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 110)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15 if len(eps_values) == 1 else -0.2),
              ncol=min(4, len(domains) * (1 if len(eps_values) == 1 else len(models)) + 1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
