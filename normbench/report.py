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
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
# TrueType (Type 42) fonts in PDFs: many venues reject the default Type 3.
matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42})
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.table import Table  # noqa: E402

from normbench import claims as claims_mod  # noqa: E402
from normbench import setups  # noqa: E402
from normbench.records import load_records  # noqa: E402
from normbench.stats import Contrast, NoSpread  # noqa: E402

METRIC = claims_mod.METRIC
SUMMARY_METRICS = ["test_acc", METRIC, "best_test_acc", "test_loss", "epochs_to_target", "steps", "train_images_per_s",
                   "epoch_s", "total_s", "peak_mem_mb", "params", "precise_bn_test_acc", "batch_stats_test_acc"]
NORM_ORDER = ["none", "lrn", "lrn_within", "bn", "ln", "in", "gn"]
# GN paper Table 2: ImageNet ResNet-50 val error (%) by images per GPU (docs/claims.md).
GN_TABLE2 = {32: (23.6, 24.1), 16: (23.7, 24.2), 8: (24.8, 24.0), 4: (27.3, 24.2), 2: (34.7, 24.1)}
PEAK_MEM_NOTE = ("peak MB: on a GPU, torch's peak allocation during the run (the test pass included); on a CPU, "
                 "how much the process's peak resident size grew during the run, shown as a lower bound (≥): runs "
                 "of one sweep share a process, whose peak the OS keeps; not shown for records that do not say which")


def norm_sort_key(label: str) -> tuple[int, str]:
    tag = label.split(" · ")[0]
    return (NORM_ORDER.index(tag) if tag in NORM_ORDER else len(NORM_ORDER), label)


# --- tables as data --------------------------------------------------------------------------


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row a run, every record field but the per-epoch history (JSON for nested ones)."""
    out = df.drop(columns=["history"]).copy()
    for col in ("norm_params", "config", "norm_sites"):
        out[col] = out[col].map(lambda p: json.dumps(p, sort_keys=True) if p is not None else None)
    return out


def varying_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The config keys (dotted) that differ between the frame's setups, one column each."""
    flats = pd.DataFrame([setups.flat_config(r) for r in df.to_dict("records")], index=df.index)
    keep = [k for k in flats.columns if k != "seed"
            and flats[k].map(lambda v: json.dumps(v, default=str)).nunique() > 1]
    return flats[keep]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row a setup (``normbench.setups``): mean, std, n over its finished (``ok``) seeds
    for each metric, how many of its runs diverged or failed, and every config key that
    varies between the folder's setups as a column of its own."""
    rows = []
    extra = varying_columns(df)
    for sid, runs in df.groupby("setup_id", sort=True):
        ok = runs[runs.status == "ok"]
        first = runs.iloc[0]
        row = {k: first[k] for k in ("setup_id", "study_id", "table", "row_label", "study_label", "dataset",
                                      "data_fingerprint", "train_images", "test_images", "model", "epochs",
                                      "norm_tag", "norm", "batch_size", "stat_batch", "lr")}
        row.update({k: extra.loc[runs.index[0], k] for k in extra.columns if k not in row})
        kinds = set(runs.peak_mem_kind.dropna())
        row.update(n=len(ok), n_diverged=int((runs.status == "diverged").sum()),
                   n_failed=int((runs.status == "failed").sum()), seeds=" ".join(map(str, sorted(ok.seed))),
                   peak_mem_kind=kinds.pop() if len(kinds) == 1 else None)
        for m in SUMMARY_METRICS:
            values = pd.to_numeric(ok[m], errors="coerce").dropna()
            if m == "peak_mem_mb" and row["peak_mem_kind"] is None:
                values = values.iloc[:0]  # old records: the process's peak, not this run's
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["table", "row_label", "batch_size"],
                                          key=lambda col: col.map(norm_sort_key) if col.name == "row_label" else col)


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


def accuracy_grid(summary: pd.DataFrame, error: bool = False, latex: bool = False) -> dict[str, pd.DataFrame]:
    """Per table (dataset by fingerprint, model, epochs): a row x batch-size grid of formatted
    cells, one setup each, the best (highest accuracy / lowest error) mean per column in bold."""
    grids = {}
    for table, s in summary.groupby("table", sort=True):
        s = s.copy()
        if error:
            s[f"{METRIC}_mean"] = 1 - s[f"{METRIC}_mean"]
        best = s[s.n > 0].groupby("batch_size")[f"{METRIC}_mean"].agg("min" if error else "max")
        cells: dict[str, dict[int, str]] = {}
        for _, row in s.iterrows():
            is_best = row.n > 0 and np.isclose(row[f"{METRIC}_mean"], best.get(row.batch_size, np.nan))
            label = row.row_label
            if row.batch_size in cells.get(label, {}):  # two setups with one label: never one cell
                label = f"{label} [{row.setup_id}]"
            cells.setdefault(label, {})[row.batch_size] = _cell(row, 100, 2, latex, bool(is_best))
        grid = pd.DataFrame(cells).T
        grid = grid.reindex(sorted(grid.index, key=norm_sort_key))[sorted(grid.columns)].fillna("–")
        grids[table] = grid
    return grids


def speed_frame(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary[summary.n > 0]
    return pd.DataFrame({
        "table": s.table, "setup": s.row_label, "batch": s.batch_size,
        "images/s": s.train_images_per_s_mean.round(0), "epoch s": s.epoch_s_mean.round(2),
        "steps": s.steps_mean.round(0), "peak MB": s.peak_mem_mb_mean.round(0), "peak kind": s.peak_mem_kind,
        "params": s.params_mean.round(0).astype("Int64"),
    })


def _peak(r: pd.Series, latex: bool = False) -> str:
    """Peak MB as measured: a CPU growth is a lower bound, so it reads ">= N"."""
    text = _fmt_or_dash(r["peak MB"], "{:.0f}")
    if text != "–" and r["peak kind"] == "cpu_peak_rss_growth":
        return ("$\\geq$" if latex else "≥") + text
    return text


# --- Markdown and LaTeX ----------------------------------------------------------------------


def _md_table(grid: pd.DataFrame, corner: str) -> str:
    head = f"| {corner} | " + " | ".join(f"bs {c}" for c in grid.columns) + " |"
    sep = "| --- |" + " ---: |" * len(grid.columns)
    body = [f"| {idx} | " + " | ".join(grid.loc[idx]) + " |" for idx in grid.index]
    return "\n".join([head, sep, *body])


def _fmt_or_dash(value: float, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def tables_markdown(summary: pd.DataFrame, varies: dict[str, str]) -> str:
    parts = ["# Results", "",
             "Test accuracy (%): median of the final 5 epochs (GN paper protocol), mean ± std over seeds (n seeds). "
             "Each cell is one setup: runs that share every config value but the seed. Best in each column in bold.",
             ""]
    short = sorted(summary.loc[summary.epochs < 5, "epochs"].unique())
    if short:
        parts += [f"Note: runs of {', '.join(map(str, short))} epoch(s) have fewer than 5 epochs, so their median "
                  "covers every epoch, early ones included; their final-epoch accuracy is `test_acc_mean` in "
                  "summary.csv.", ""]
    errors = accuracy_grid(summary, error=True)
    for table, grid in accuracy_grid(summary).items():
        line = f"Setups in this table vary in: {varies.get(table, '?')}."
        parts += [f"## {table}: test accuracy (%)", "", line, "", _md_table(grid, "setup"), "",
                  f"## {table}: test error (%)", "", _md_table(errors[table], "setup"), ""]
    parts += bn_eval_markdown(summary)
    speed = speed_frame(summary)
    parts += ["## Speed", "", "Training throughput (first epoch excluded), median epoch time, SGD steps per run, "
              f"peak memory, parameters; means over seeds. {PEAK_MEM_NOTE}.", "",
              "| table | setup | batch | images/s | epoch s | steps | peak MB | params |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    parts += [f"| {r.table} | {r.setup} | {r.batch} | {_fmt_or_dash(r['images/s'], '{:.0f}')} | "
              f"{_fmt_or_dash(r['epoch s'], '{:.2f}')} | {_fmt_or_dash(r.steps, '{:,.0f}')} | "
              f"{_peak(r)} | {r.params} |" for _, r in speed.iterrows()]
    return "\n".join(parts) + "\n"


def _pm(row: pd.Series, metric: str) -> str:
    mean, std = row[f"{metric}_mean"] * 100, row[f"{metric}_std"] * 100
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def bn_eval_markdown(summary: pd.DataFrame) -> list[str]:
    """Setups with batch-dependent norms: the final weights' test accuracy with running
    averages, PreciseBN and batch statistics, side by side (docs/records.md, ``bn_eval``)."""
    s = summary[summary.n > 0]
    s = s[s.precise_bn_test_acc_mean.notna() | s.batch_stats_test_acc_mean.notna()]
    if s.empty:
        return []
    parts = ["## Batch-dependent norms evaluated three ways", "",
             "Final-epoch test accuracy (%) of the same final weights, mean ± std over seeds: with the running "
             "averages (as every run is evaluated), with PreciseBN (population statistics recomputed with the final "
             "weights over `precise_bn_images` training images, 2,048 by default), and with batch statistics over "
             "groups of test images as large as the "
             "training statistics batch. PreciseBN above running: the running averages estimated the statistics "
             "badly. Batch statistics above PreciseBN: the network relies on its batch noise, which no population "
             "statistics reproduce (Wu & Johnson 2021). – : not measured for this norm.", "",
             "| table | setup | batch | statistics batch | running averages | PreciseBN | batch statistics | n |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for _, r in s.iterrows():
        stat = "–" if pd.isna(r.stat_batch) else str(int(r.stat_batch))
        parts.append(f"| {r.table} | {r.row_label} | {r.batch_size} | {stat} | {_pm(r, 'test_acc')} | "
                     f"{_pm(r, 'precise_bn_test_acc')} | {_pm(r, 'batch_stats_test_acc')} | {int(r.n)} |")
    return parts + [""]


def _tex(text: str) -> str:
    out = str(text).replace("_", r"\_").replace("%", r"\%").replace("–", "--").replace("#", r"\#")
    return out.replace("·", r"$\cdot$").replace("[", "{[}").replace("]", "{]}")


def _tex_table(grid: pd.DataFrame, caption: str, label: str) -> str:
    cols = "l" + "r" * len(grid.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             "setup & " + " & ".join(f"bs {c}" for c in grid.columns) + r" \\", r"\midrule"]
    lines += [_tex(idx) + " & " + " & ".join(_tex(v) if "textbf" not in v else v.replace("–", "--")
                                             for v in grid.loc[idx]) + r" \\" for idx in grid.index]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def tables_latex(summary: pd.DataFrame, varies: dict[str, str]) -> str:
    """Booktabs tables; needs ``\\usepackage{booktabs}`` in the preamble."""
    parts = ["% normbench report: \\usepackage{booktabs} in the preamble", ""]
    for table, grid in accuracy_grid(summary, latex=True).items():
        caption = (f"{_tex(table)}: test accuracy (\\%), median of the final 5 epochs, mean $\\pm$ std over seeds "
                   f"(n); one setup per cell; setups vary in {_tex(varies.get(table, '?'))}. Best per batch size "
                   "in bold.")
        parts.append(_tex_table(grid, caption, f"tab:acc-{_slug(table)}"))
    speed = speed_frame(summary)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{Training speed: images/s (first epoch excluded), median epoch time, SGD steps, peak memory "
             r"(GPU: peak allocated by torch; CPU: growth of the process's peak resident size), parameters.}",
             r"\label{tab:speed}", r"\begin{tabular}{llrrrrrr}", r"\toprule",
             r"table & setup & batch & images/s & epoch s & steps & peak MB & params \\", r"\midrule"]
    lines += [f"{_tex(r.table)} & {_tex(r.setup)} & {r.batch} & {_tex(_fmt_or_dash(r['images/s'], '{:.0f}'))} & "
              f"{_tex(_fmt_or_dash(r['epoch s'], '{:.2f}'))} & {_tex(_fmt_or_dash(r.steps, '{:.0f}'))} & "
              f"{_tex(_peak(r, latex=True))} & {r.params} \\\\" for _, r in speed.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(parts + lines)


def claims_markdown(verdicts: pd.DataFrame, df: pd.DataFrame, plan: claims_mod.Plan) -> str:
    parts = ["# Claims", "",
             "Each claim is checked within one *study*: setups that differ only in norm and batch size, everything "
             "else equal (listed under each study). A verdict holds for that setup only; it says what these runs "
             "show, never that a paper is wrong.", "",
             f"Statistics: per-seed `{METRIC}`; Welch t with Welch-Satterthwaite degrees of freedom and a 95% "
             f"confidence interval for every difference; strict claims are one-sided tests of > 0, `>=` claims "
             f"non-inferiority with a margin of {plan.margin * 100:g} point(s), \"stays flat\" equivalence (TOST) "
             f"within ±{plan.margin * 100:g} point(s); Holm's correction over a claim's comparisons on both sides; "
             f"alpha = {plan.alpha}.", "",
             "- `supported`: every comparison goes the claimed way (Holm-adjusted p < alpha).",
             "- `not reproduced`: at least one goes significantly against the claim, in this setup.",
             "- `inconclusive`: neither; the reason is given (runs missing, < 2 seeds, a diverged or failed run "
             "(a t-test cannot score it), no spread, within noise).",
             "- `out of scope`: a validity gate failed: the metric needs >= "
             f"{plan.min_epochs} epochs; batch-size claims need SGD steps within {plan.steps_ratio:g}x across the "
             f"compared batch sizes or a batch-blind baseline (none, else gn) that moves <= {plan.swing * 100:g} "
             f"points; the GN claims (and the batch-independent-norms claim, for each of its norms with runs at 32) need the "
             f"norm and BN within ±{plan.domain * 100:g} points at batch "
             f"{claims_mod.REFERENCE_BATCH}.", ""]
    for (study, label), v_study in verdicts.groupby(["study_id", "study"], sort=False):
        runs = df[df.study_id == study]
        fixed = setups.fixed_summary(setups.flat_config(runs.iloc[0].to_dict()))
        norms = ", ".join(sorted(set(runs.norm_tag), key=norm_sort_key))
        batches = ", ".join(map(str, sorted(set(runs.batch_size))))
        parts += [f"## Study: {label}", "", f"- Holds for: {fixed}",
                  f"- Varies: norm ({norms}), batch_size ({batches}); {len(runs)} runs", "",
                  "| claim | verdict |", "| --- | --- |"]
        parts += [f"| {v.statement} | **{v.verdict}** |" for _, v in v_study.iterrows()]
        for _, v in v_study.iterrows():
            parts += ["", f"### {v.statement}", "", f"- Source: {v.source}", f"- Paper: {v.paper}",
                      f"- Needs: {v.needs}", f"- Verdict: **{v.verdict}**: {v.why}"]
            if v.gates:
                parts += ["- Validity gates:"] + [f"  - {line}" for line in v.gates]
            if v.numbers:
                parts += ["- Ours:"] + [f"  - {line}" for line in v.numbers]
        parts.append("")
    return "\n".join(parts) + "\n"


def paper_gn_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per study with bn and gn runs: our BN - GN error gap (points, 95% CI) per batch size
    beside GN paper Table 2's. Runs of different studies are never pooled."""
    out = {}
    for label, study in df.groupby("study_label", sort=True):
        ok = study[study.status == "ok"]
        if not ({"bn", "gn"} <= set(ok.norm_tag)):
            continue
        rows = []
        for b in sorted(set(GN_TABLE2) | set(ok.batch_size)):
            row: dict[str, object] = {"batch": b}
            if b in GN_TABLE2:
                bn, gn = GN_TABLE2[b]
                row.update(paper_bn_err=bn, paper_gn_err=gn, paper_gap=round(bn - gn, 1))
            errs = {t: 100 * (1 - pd.to_numeric(ok[(ok.norm_tag == t) & (ok.batch_size == b)][METRIC]))
                    for t in ("bn", "gn")}
            if len(errs["bn"]) and len(errs["gn"]):
                row.update(ours_bn_err=errs["bn"].mean(), ours_gn_err=errs["gn"].mean(),
                           ours_gap=errs["bn"].mean() - errs["gn"].mean(), n=f"{len(errs['bn'])}/{len(errs['gn'])}")
                try:
                    row["ours_gap_ci"] = Contrast.diff("bn", errs["bn"], "gn", errs["gn"]).ci()
                except (NoSpread, ValueError):
                    row["ours_gap_ci"] = None
            rows.append(row)
        out[label] = pd.DataFrame(rows).set_index("batch")
    return out


def paper_gn_rich(label: str, table: pd.DataFrame) -> Table:
    def f(row: pd.Series, key: str, fmt: str = "{:.1f}") -> str:
        value = row.get(key)
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)

    out = Table(title=f"test error (%): GN paper Table 2 (ResNet-50, ImageNet) vs ours ({label}); gap = BN - GN")
    for col in ("batch", "paper BN", "paper GN", "paper gap", "ours BN", "ours GN", "ours gap [95% CI]", "n bn/gn"):
        out.add_column(col, justify="right")
    for b, row in table.iterrows():
        gap = f(row, "ours_gap", "{:+.2f}")
        ci = row.get("ours_gap_ci")
        if gap != "–" and isinstance(ci, tuple):
            gap += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
        out.add_row(str(b), f(row, "paper_bn_err"), f(row, "paper_gn_err"), f(row, "paper_gap", "{:+.1f}"),
                    f(row, "ours_bn_err", "{:.2f}"), f(row, "ours_gn_err", "{:.2f}"), gap, f(row, "n", "{}"))
    return out


# --- figures ---------------------------------------------------------------------------------


def _save(fig: plt.Figure, out: Path, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=150)
    fig.savefig(out / f"{name}.pdf", metadata={"CreationDate": None})  # same runs, same bytes
    plt.close(fig)


#: Each line of a panel its own marker and dash pattern, so lines that coincide (none under
#: lrn_within: LRN on normalized inputs is near the identity) stay distinguishable.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DASHES = ("-", "--", "-.", ":")


def _style(i: int) -> dict[str, str]:
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": DASHES[i % len(DASHES)]}


def _tables(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return list(summary[summary.n > 0].groupby("table", sort=True))


def _x_axis(s: pd.DataFrame) -> tuple[str, str]:
    """What a table's panel plots against: the batch size, or, for a design that holds the SGD
    batch fixed and varies the images behind each batch statistic (ghost batch BN,
    ``norm.stat_batch``), the statistics batch. Column and axis label."""
    stat = s.stat_batch.dropna() if "stat_batch" in s else pd.Series(dtype=float)
    if s.batch_size.nunique() == 1 and stat.nunique() > 1:
        return "stat_batch", f"statistics batch (images per batch statistic; SGD batch {int(s.batch_size.iloc[0])})"
    return "batch_size", "batch size (images per step)"


def _without_stat_batch(label: str) -> str:
    """``bn · norm.stat_batch=4, optim.lr=0.1`` -> ``bn · optim.lr=0.1``; ``bn · norm.stat_batch=4`` -> ``bn``."""
    tag, _, extras = label.partition(" · ")
    kept = [e for e in extras.split(", ") if e and not e.startswith("norm.stat_batch=")]
    return tag + (f" · {', '.join(kept)}" if kept else "")


def _against_batch_size(summary: pd.DataFrame, out: Path, name: str, ylabel: str,
                        draw: Callable[[plt.Axes, pd.DataFrame, str, dict[str, str]], None]) -> None:
    """One panel per table (dataset, model, epochs), one line per row (setup without batch
    size), log2 batch-size axis (or statistics-batch axis, ``_x_axis``). On a statistics-batch
    axis a setup whose layers use no batch statistic (GN, none) has no x of its own: it is
    drawn as a horizontal line at its value, across the axis."""
    groups = _tables(summary)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5.5 * max(1, len(groups)), 4), squeeze=False)
    for ax, (table, s) in zip(axes[0], groups):
        x, xlabel = _x_axis(s)
        xs = sorted(int(v) for v in s[x].dropna().unique())
        # One line per setup but its x: on a statistics-batch axis, a label without its stat_batch.
        line = s.row_label if x == "batch_size" else s.row_label.map(_without_stat_batch)
        for i, label in enumerate(sorted(line.unique(), key=norm_sort_key)):
            rows = s[line == label]
            if x == "stat_batch" and rows.stat_batch.isna().all():
                rows = pd.concat([rows] * 2).assign(stat_batch=[xs[0]] * len(rows) + [xs[-1]] * len(rows))
            draw(ax, rows.sort_values(x).assign(x=lambda r: r[x]), label, _style(i))
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(b) for b in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(textwrap.fill(table, 70), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out, name)


def figure_error_vs_batch(summary: pd.DataFrame, out: Path) -> None:
    """Test error against batch size with std error bars over seeds (GN paper, Fig. 1)."""
    _against_batch_size(summary, out, "error_vs_batch", "test error (%)", lambda ax, r, label, style: ax.errorbar(
        r.x, 100 * (1 - r[f"{METRIC}_mean"]), yerr=100 * r[f"{METRIC}_std"].fillna(0),
        capsize=3, label=label, **style))


def figure_speed(summary: pd.DataFrame, out: Path) -> None:
    """Training throughput per setup against batch size."""
    _against_batch_size(summary, out, "speed", "training images / s", lambda ax, r, label, style: ax.plot(
        r.x, r.train_images_per_s_mean, label=label, **style))


def figure_curves(df: pd.DataFrame, out: Path) -> None:
    """Accuracy per epoch per setup (mean over its seeds), one panel per table and batch size:
    validation accuracy where every run of the panel has a validation split (data.val_size),
    so that the curves a user reads to choose anything are not the test split's."""
    ok = df[df.status == "ok"]
    panels = sorted(ok.groupby(["table", "batch_size"]).groups)
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (table, b) in zip(axes.flat, panels):
        sel = ok[(ok.table == table) & (ok.batch_size == b)]
        split = "val" if all(any("val_acc" in h for h in hs) for hs in sel.history) else "test"
        for i, label in enumerate(sorted(sel.row_label.unique(), key=norm_sort_key)):
            hist = pd.DataFrame([h for hs in sel[sel.row_label == label].history for h in hs])
            curve = hist.groupby("epoch")[f"{split}_acc"].mean()
            ax.plot(curve.index, 100 * curve.to_numpy(), label=label, markersize=4, **_style(i))
        ax.set_title(textwrap.fill(f"{table}, batch {b}", 70), fontsize=7)  # long titles wrap, not cut
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{'validation' if split == 'val' else 'test'} accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    _save(fig, out, "curves")


# --- entry point -----------------------------------------------------------------------------


def write_report(runs_dir: Path, out: Path, plan: claims_mod.Plan | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str], dict[str, str]]:
    """Write every report file; return (runs, summary, verdicts, problems, the keys each
    table's setups vary in)."""
    plan = plan or claims_mod.Plan()
    df, problems = load_records(runs_dir)
    if df.empty:
        return df, pd.DataFrame(), pd.DataFrame(), problems, {}
    df, varying = setups.annotate(df)
    varies = {table: setups.varying_summary(keys) for table, keys in varying.items()}
    out.mkdir(parents=True, exist_ok=True)
    runs_table(df).to_csv(out / "runs.csv", index=False)
    summary = summarize(df)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "tables.md").write_text(tables_markdown(summary, varies))
    (out / "tables.tex").write_text(tables_latex(summary, varies))
    verdicts = claims_mod.evaluate(df, plan)
    (out / "claims.md").write_text(claims_markdown(verdicts, df, plan))
    figure_error_vs_batch(summary, out)
    figure_curves(df, out)
    figure_speed(summary, out)
    return df, summary, verdicts, problems, varies


def _points(text: str) -> float:
    value = float(text)
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"{text} is not valid; allowed: points of accuracy, > 0 and < 100")
    return value / 100


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not valid; allowed: a level > 0 and < 1, e.g. 0.05")
    return value


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    ap = argparse.ArgumentParser(prog="normbench report", description="Tables, figures and claim verdicts from runs.")
    ap.add_argument("runs", nargs="?", default="results/runs", help="runs folder (default: results/runs)")
    ap.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    ap.add_argument("--paper", choices=["gn"], help="print our numbers beside a paper's table (gn: GN paper Table 2)")
    ap.add_argument("--margin", type=_points, default=claims_mod.Plan.margin,
                    help="equivalence / non-inferiority margin in points of accuracy (default: 1)")
    ap.add_argument("--alpha", type=_alpha, default=claims_mod.Plan.alpha, help="significance level (default: 0.05)")
    ap.add_argument("--quiet", action="store_true", help="print only where the report is")
    args = ap.parse_args(argv)
    plan = claims_mod.Plan(alpha=args.alpha, margin=args.margin)
    runs, out = Path(args.runs), Path(args.out)
    console = Console(width=None if sys.stdout.isatty() else 160)  # files and pipes: do not wrap at 80
    if not runs.is_dir():
        print(f"error: runs folder {runs} does not exist; train first (normbench train ...) or pass the runs folder",
              file=sys.stderr)
        return 2
    try:
        runs_df, summary, verdicts, problems, varies = write_report(runs, out, plan)
    except OSError as err:
        print(f"error: cannot write the report to {out} ({err.strerror}); pass --out <writable folder>", file=sys.stderr)
        return 2
    for line in problems:
        console.print(f"[yellow]left out[/]: {line}", highlight=False)
    if summary.empty:
        print(f"error: no finished runs under {runs}", file=sys.stderr)
        return 1
    if not args.quiet:
        for table, grid in accuracy_grid(summary).items():
            out_table = Table(title=f"{table}: test accuracy % (last-5 median, mean ± std (n)); "
                                    f"setups vary in {varies.get(table, '?')}")
            out_table.add_column("setup")
            for b in grid.columns:
                out_table.add_column(f"bs {b}", justify="right")
            for idx in grid.index:
                out_table.add_row(idx, *[v.replace("**", "") for v in grid.loc[idx]])
            console.print(out_table)
        counts = verdicts.verdict.value_counts().to_dict()
        console.print("claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" (see {out / 'claims.md'})")
    if args.paper == "gn":
        tables = paper_gn_tables(runs_df)
        if not tables:
            console.print("--paper gn: no study here has both bn and gn runs")
        for label, table in tables.items():
            console.print(paper_gn_rich(label, table))
    print(f"report: {out} (tables.md, tables.tex, claims.md, runs.csv, summary.csv, figures)")
    return 0
