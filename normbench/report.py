"""``normbench report``: finished run directories -> tables, figures and claim verdicts.

Reads only ``record.json`` files (via ``normbench.records``), never training code, and
writes to the output folder: ``runs.csv``, ``summary.csv``, ``tables.md``, ``tables.tex``
(booktabs), ``claims.md``, and ``error_vs_batch``, ``curves``, ``speed`` as PNG and PDF.

Accuracy is ``test_acc_last5_median`` (the GN paper's protocol: median test accuracy of
the final 5 epochs), shown as mean ± sample std over seeds with n. Runs that diverged or
failed are shown as such, never as numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.table import Table  # noqa: E402

from normbench import claims as claims_mod  # noqa: E402
from normbench.records import load_records  # noqa: E402

METRIC = claims_mod.METRIC
CONFIG_KEYS = ["dataset", "model", "epochs", "norm_tag", "batch_size"]
SUMMARY_METRICS = ["test_acc", METRIC, "best_test_acc", "test_loss", "epochs_to_target", "train_images_per_s",
                   "epoch_s", "total_s", "peak_mem_mb", "params"]
NORM_ORDER = ["none", "lrn", "lrn_within", "bn", "ln", "in", "gn"]
# GN paper Table 2: ImageNet ResNet-50 val error (%) by images per GPU (REFERENCES.md §3).
GN_TABLE2 = {32: (23.6, 24.1), 16: (23.7, 24.2), 8: (24.8, 24.0), 4: (27.3, 24.2), 2: (34.7, 24.1)}


def norm_sort_key(tag: str) -> tuple[int, str]:
    return (NORM_ORDER.index(tag) if tag in NORM_ORDER else len(NORM_ORDER), tag)


# --- tables as data --------------------------------------------------------------------------


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row a run, every record field but the per-epoch history (JSON for nested ones)."""
    out = df.drop(columns=["history"]).copy()
    out["norm_params"] = out["norm_params"].map(lambda p: json.dumps(p, sort_keys=True))
    return out


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row a configuration: mean, std, n over its finished (``ok``) seeds for each metric,
    and how many of its runs diverged or failed."""
    rows = []
    for key, runs in df.groupby(CONFIG_KEYS, sort=True):
        ok = runs[runs.status == "ok"]
        row = dict(zip(CONFIG_KEYS, key))
        row.update(norm=runs.norm.iloc[0], lr=runs.lr.iloc[0], n=len(ok),
                   n_diverged=int((runs.status == "diverged").sum()), n_failed=int((runs.status == "failed").sum()))
        for m in SUMMARY_METRICS:
            values = pd.to_numeric(ok[m], errors="coerce").dropna()
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, scale: float, digits: int, latex: bool, bold: bool) -> str:
    bad = []
    if row.n_diverged:
        bad.append(f"{row.n_diverged} diverged")
    if row.n_failed:
        bad.append(f"{row.n_failed} failed")
    if row.n == 0:
        return ", ".join(bad)
    mean, std = row[f"{METRIC}_mean"] * scale, row[f"{METRIC}_std"] * scale
    value = f"{mean:.{digits}f}"
    if bold:
        value = f"\\textbf{{{value}}}" if latex else f"**{value}**"
    pm = "$\\pm$" if latex else "±"
    text = f"{value} {pm} {std:.{digits}f}" if not math.isnan(std) else value
    text += f" ({int(row.n)})"
    return text + (f" [{', '.join(bad)}]" if bad else "")


def accuracy_grid(summary: pd.DataFrame, error: bool = False, latex: bool = False) -> dict[tuple, pd.DataFrame]:
    """Per (dataset, model, epochs): a norm x batch-size grid of formatted cells, the best
    (highest accuracy / lowest error) mean in each column in bold."""
    grids = {}
    for group, s in summary.groupby(["dataset", "model", "epochs"], sort=True):
        s = s.copy()
        if error:
            s[f"{METRIC}_mean"] = 1 - s[f"{METRIC}_mean"]
        best = s[s.n > 0].groupby("batch_size")[f"{METRIC}_mean"].agg("min" if error else "max")
        cells: dict[str, dict[int, str]] = {}
        for _, row in s.iterrows():
            is_best = row.n > 0 and np.isclose(row[f"{METRIC}_mean"], best.get(row.batch_size, np.nan))
            cells.setdefault(row.norm_tag, {})[row.batch_size] = _cell(row, 100, 2, latex, bool(is_best))
        grid = pd.DataFrame(cells).T
        grid = grid.reindex(sorted(grid.index, key=norm_sort_key))[sorted(grid.columns)].fillna("–")
        grids[group] = grid
    return grids


def speed_frame(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary[summary.n > 0]
    out = pd.DataFrame({
        "dataset": s.dataset, "model": s.model, "norm": s.norm_tag, "batch": s.batch_size,
        "images/s": s.train_images_per_s_mean.round(0), "epoch s": s.epoch_s_mean.round(2),
        "peak MB": s.peak_mem_mb_mean.round(0), "params": s.params_mean.round(0).astype("Int64"),
    })
    return out.sort_values(["dataset", "model", "norm", "batch"], key=lambda col: col.map(
        lambda v: norm_sort_key(v) if col.name == "norm" else v))


# --- Markdown and LaTeX ----------------------------------------------------------------------


def _md_table(grid: pd.DataFrame, corner: str) -> str:
    head = f"| {corner} | " + " | ".join(f"bs {c}" for c in grid.columns) + " |"
    sep = "| --- |" + " ---: |" * len(grid.columns)
    body = [f"| {idx} | " + " | ".join(grid.loc[idx]) + " |" for idx in grid.index]
    return "\n".join([head, sep, *body])


def tables_markdown(summary: pd.DataFrame) -> str:
    parts = ["# Results", "",
             "Test accuracy (%): median of the final 5 epochs (GN paper protocol), mean ± std over seeds (n seeds). "
             "Best in each column in bold.", ""]
    short = sorted(summary.loc[summary.epochs < 5, "epochs"].unique())
    if short:
        parts += [f"Note: runs of {', '.join(map(str, short))} epoch(s) have fewer than 5 epochs, so their median "
                  "covers every epoch, early ones included; their final-epoch accuracy is `test_acc_mean` in "
                  "summary.csv.", ""]
    errors = accuracy_grid(summary, error=True)
    for group, grid in accuracy_grid(summary).items():
        dataset, model, epochs = group
        parts += [f"## {dataset} / {model}, {epochs} epochs: test accuracy (%)", "", _md_table(grid, "norm"), "",
                  f"## {dataset} / {model}, {epochs} epochs: test error (%)", "", _md_table(errors[group], "norm"), ""]
    speed = speed_frame(summary)
    parts += ["## Speed", "", "Training throughput (first epoch excluded), median epoch time, peak memory "
              "(GPU: allocated by torch; CPU: process peak RSS), parameters.", "",
              "| dataset | model | norm | batch | images/s | epoch s | peak MB | params |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    parts += [f"| {r.dataset} | {r.model} | {r.norm} | {r.batch} | {r['images/s']:.0f} | {r['epoch s']:.2f} | "
              f"{r['peak MB']:.0f} | {r.params} |" for _, r in speed.iterrows()]
    return "\n".join(parts) + "\n"


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%").replace("–", "--").replace("#", r"\#")


def _tex_table(grid: pd.DataFrame, caption: str, label: str) -> str:
    cols = "l" + "r" * len(grid.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             "norm & " + " & ".join(f"bs {c}" for c in grid.columns) + r" \\", r"\midrule"]
    lines += [_tex(idx) + " & " + " & ".join(_tex(v) if "textbf" not in v else v.replace("–", "--")
                                             for v in grid.loc[idx]) + r" \\" for idx in grid.index]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def tables_latex(summary: pd.DataFrame) -> str:
    """Booktabs tables; needs ``\\usepackage{booktabs}`` in the preamble."""
    parts = ["% normbench report: \\usepackage{booktabs} in the preamble", ""]
    for (dataset, model, epochs), grid in accuracy_grid(summary, latex=True).items():
        caption = (f"{_tex(dataset)} / {_tex(model)}, {epochs} epochs: test accuracy (\\%), median of the final 5 "
                   f"epochs, mean $\\pm$ std over seeds (n). Best per batch size in bold.")
        parts.append(_tex_table(grid, caption, f"tab:acc-{dataset}-{model}-{epochs}".replace("_", "-")))
    speed = speed_frame(summary)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{Training speed: images/s (first epoch excluded), median epoch time, peak memory, parameters.}",
             r"\label{tab:speed}", r"\begin{tabular}{lllrrrrr}", r"\toprule",
             r"dataset & model & norm & batch & images/s & epoch s & peak MB & params \\", r"\midrule"]
    lines += [f"{_tex(r.dataset)} & {_tex(r.model)} & {_tex(r.norm)} & {r.batch} & {r['images/s']:.0f} & "
              f"{r['epoch s']:.2f} & {r['peak MB']:.0f} & {r.params} \\\\" for _, r in speed.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(parts + lines)


def claims_markdown(verdicts: pd.DataFrame) -> str:
    parts = ["# Claims", "",
             f"Each claim is checked within each (dataset, model, epochs) group on per-seed `{METRIC}` with a "
             f"one-sided Welch t-test at p < {claims_mod.ALPHA}. `supported`: every comparison goes the claimed way "
             "significantly; `refuted`: one goes significantly against it and none for it; `inconclusive`: the runs "
             "cannot tell (reason given).", "",
             "| claim | group | verdict |", "| --- | --- | --- |"]
    parts += [f"| {v.statement} | {v.dataset} / {v.model}, {v.epochs} ep | **{v.verdict}** |" for _, v in verdicts.iterrows()]
    for _, v in verdicts.iterrows():
        parts += ["", f"## {v.statement} ({v.dataset} / {v.model}, {v.epochs} epochs)", "",
                  f"- Source: {v.source}", f"- Paper: {v.paper}", f"- Needs: {v.needs}",
                  f"- Verdict: **{v.verdict}**: {v.why}"]
        if v.numbers:
            parts += ["- Ours:"] + [f"  - {line}" for line in v.numbers]
    return "\n".join(parts) + "\n"


def paper_gn_table(df: pd.DataFrame) -> pd.DataFrame:
    """Our BN - GN error gap (points) per batch size beside GN paper Table 2's."""
    rows = []
    ok = df[df.status == "ok"]
    for b in sorted(set(GN_TABLE2) | set(ok.batch_size)):
        row = {"batch": b}
        if b in GN_TABLE2:
            bn, gn = GN_TABLE2[b]
            row.update(paper_bn_err=bn, paper_gn_err=gn, paper_gap=round(bn - gn, 1))
        errs = {t: 100 * (1 - ok[(ok.norm_tag == t) & (ok.batch_size == b)][METRIC].astype(float)) for t in ("bn", "gn")}
        if len(errs["bn"]) and len(errs["gn"]):
            se = math.sqrt(sum(e.var(ddof=1) / len(e) if len(e) > 1 else math.nan for e in errs.values()))
            row.update(ours_bn_err=errs["bn"].mean(), ours_gn_err=errs["gn"].mean(),
                       ours_gap=errs["bn"].mean() - errs["gn"].mean(), ours_gap_se=se,
                       n=f"{len(errs['bn'])}/{len(errs['gn'])}")
        rows.append(row)
    return pd.DataFrame(rows).set_index("batch")


def paper_gn_rich(table: pd.DataFrame) -> Table:
    def f(row: pd.Series, key: str, fmt: str = "{:.1f}") -> str:
        value = row.get(key)
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)

    out = Table(title="test error (%): GN paper Table 2 (ResNet-50, ImageNet) vs ours; gap = BN - GN")
    for col in ("batch", "paper BN", "paper GN", "paper gap", "ours BN", "ours GN", "ours gap ± s.e.", "n bn/gn"):
        out.add_column(col, justify="right")
    for b, row in table.iterrows():
        gap = f(row, "ours_gap", "{:+.2f}")
        if gap != "–" and not math.isnan(row.get("ours_gap_se", math.nan)):
            gap += f" ± {row['ours_gap_se']:.2f}"
        out.add_row(str(b), f(row, "paper_bn_err"), f(row, "paper_gn_err"), f(row, "paper_gap", "{:+.1f}"),
                    f(row, "ours_bn_err", "{:.2f}"), f(row, "ours_gn_err", "{:.2f}"), gap, f(row, "n", "{}"))
    return out


# --- figures ---------------------------------------------------------------------------------


def _save(fig: plt.Figure, out: Path, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=150)
    fig.savefig(out / f"{name}.pdf", metadata={"CreationDate": None})  # same runs, same bytes
    plt.close(fig)


def _groups(summary: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    return list(summary[summary.n > 0].groupby(["dataset", "model", "epochs"], sort=True))


def _against_batch_size(summary: pd.DataFrame, out: Path, name: str, ylabel: str,
                        draw: Callable[[plt.Axes, pd.DataFrame, str], None]) -> None:
    """One panel per (dataset, model, epochs), one line per norm, log2 batch-size axis."""
    groups = _groups(summary)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5.5 * max(1, len(groups)), 4), squeeze=False)
    for ax, ((dataset, model, epochs), s) in zip(axes[0], groups):
        for tag in sorted(s.norm_tag.unique(), key=norm_sort_key):
            draw(ax, s[s.norm_tag == tag].sort_values("batch_size"), tag)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(s.batch_size.unique()), [str(b) for b in sorted(s.batch_size.unique())])
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{dataset} / {model}, {epochs} epochs")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, out, name)


def figure_error_vs_batch(summary: pd.DataFrame, out: Path) -> None:
    """Test error against batch size with std error bars over seeds (GN paper, Fig. 1)."""
    _against_batch_size(summary, out, "error_vs_batch", "test error (%)", lambda ax, r, tag: ax.errorbar(
        r.batch_size, 100 * (1 - r[f"{METRIC}_mean"]), yerr=100 * r[f"{METRIC}_std"].fillna(0),
        marker="o", capsize=3, label=tag))


def figure_speed(summary: pd.DataFrame, out: Path) -> None:
    """Training throughput per norm against batch size."""
    _against_batch_size(summary, out, "speed", "training images / s", lambda ax, r, tag: ax.plot(
        r.batch_size, r.train_images_per_s_mean, marker="o", label=tag))


def figure_curves(df: pd.DataFrame, out: Path) -> None:
    """Test accuracy per epoch per norm (mean over seeds), one panel per batch size."""
    ok = df[df.status == "ok"]
    panels = sorted(ok.groupby(["dataset", "model", "batch_size"]).groups)
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (dataset, model, b) in zip(axes.flat, panels):
        sel = ok[(ok.dataset == dataset) & (ok.model == model) & (ok.batch_size == b)]
        for tag in sorted(sel.norm_tag.unique(), key=norm_sort_key):
            hist = pd.DataFrame([h for hs in sel[sel.norm_tag == tag].history for h in hs])
            curve = hist.groupby("epoch").test_acc.mean()
            ax.plot(curve.index, 100 * curve.to_numpy(), marker=".", label=tag)
        ax.set_title(f"{dataset} / {model}, batch {b}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    _save(fig, out, "curves")


# --- entry point -----------------------------------------------------------------------------


def write_report(runs_dir: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Write every report file; return (runs, summary, verdicts, problems)."""
    df, problems = load_records(runs_dir)
    if df.empty:
        return df, pd.DataFrame(), pd.DataFrame(), problems
    out.mkdir(parents=True, exist_ok=True)
    runs_table(df).to_csv(out / "runs.csv", index=False)
    summary = summarize(df)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "tables.md").write_text(tables_markdown(summary))
    (out / "tables.tex").write_text(tables_latex(summary))
    verdicts = claims_mod.evaluate(df)
    (out / "claims.md").write_text(claims_markdown(verdicts))
    figure_error_vs_batch(summary, out)
    figure_curves(df, out)
    figure_speed(summary, out)
    return df, summary, verdicts, problems


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    ap = argparse.ArgumentParser(prog="normbench report", description="Tables, figures and claim verdicts from runs.")
    ap.add_argument("runs", nargs="?", default="results/runs", help="runs folder (default: results/runs)")
    ap.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    ap.add_argument("--paper", choices=["gn"], help="print our numbers beside a paper's table (gn: GN paper Table 2)")
    ap.add_argument("--quiet", action="store_true", help="print only where the report is")
    args = ap.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    console = Console(width=None if sys.stdout.isatty() else 160)  # files and pipes: do not wrap at 80
    if not runs.is_dir():
        print(f"error: runs folder {runs} does not exist; train first (normbench train ...) or pass the runs folder",
              file=sys.stderr)
        return 2
    try:
        runs_df, summary, verdicts, problems = write_report(runs, out)
    except OSError as err:
        print(f"error: cannot write the report to {out} ({err.strerror}); pass --out <writable folder>", file=sys.stderr)
        return 2
    for line in problems:
        console.print(f"[yellow]left out[/]: {line}", highlight=False)
    if summary.empty:
        print(f"error: no finished runs under {runs}", file=sys.stderr)
        return 1
    if not args.quiet:
        for (dataset, model, epochs), grid in accuracy_grid(summary).items():
            table = Table(title=f"{dataset} / {model}, {epochs} epochs: test accuracy % (last-5 median, mean ± std (n))")
            table.add_column("norm")
            for b in grid.columns:
                table.add_column(f"bs {b}", justify="right")
            for idx in grid.index:
                table.add_row(idx, *[v.replace("**", "") for v in grid.loc[idx]])
            console.print(table)
        counts = verdicts.verdict.value_counts().to_dict()
        console.print("claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" (see {out / 'claims.md'})")
    if args.paper == "gn":
        console.print(paper_gn_rich(paper_gn_table(runs_df)))
    print(f"report: {out} (tables.md, tables.tex, claims.md, runs.csv, summary.csv, figures)")
    return 0
