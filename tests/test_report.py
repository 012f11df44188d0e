"""The report stage on records with known values: setups are never pooled, tables, bold,
LaTeX, claims with gates and sound statistics, bad records left out in one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from records_factory import record, seeds, write_runs

from normbench import claims, setups
from normbench.records import FIELDS, load_records
from normbench.report import main as report_main
from normbench.report import paper_gn_tables


def frame(recs: list[dict]) -> pd.DataFrame:
    """Records as the report sees them: loaded (derived numbers added) and annotated."""
    from normbench.derived import derive_record

    rows = [{**{f: r.get(f) for f in FIELDS}, **derive_record(r), "run_dir": r["run_key"]} for r in recs]
    return setups.annotate(pd.DataFrame(rows))[0]


@pytest.fixture
def report_dir(tmp_path: Path) -> tuple[Path, Path]:
    recs = (seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.60, 0.61, 0.62])
            + seeds("bn", 32, [0.70, 0.72, 0.74]) + seeds("gn", 32, [0.69, 0.70, 0.71])
            + [record("none", 32, 0, None, status="diverged"), record("none", 32, 1, 0.30)])
    runs = write_runs(tmp_path / "runs", recs)
    out = tmp_path / "report"
    assert report_main([str(runs), "--out", str(out), "--quiet"]) == 0
    return runs, out


def test_report_writes_every_file(report_dir):
    _, out = report_dir
    for name in ("runs.csv", "summary.csv", "tables.md", "tables.tex", "claims.md", "error_vs_batch.png",
                 "error_vs_batch.pdf", "curves.png", "curves.pdf", "speed.png", "speed.pdf"):
        assert (out / name).stat().st_size > 0, name


def test_runs_and_summary_csv_numbers(report_dir):
    _, out = report_dir
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 14 and "history" not in runs.columns and set(FIELDS) - {"history"} <= set(runs.columns)
    assert {"test_acc_last5_median", "steps", "setup_id", "study_id"} <= set(runs.columns)  # derived, annotated
    summary = pd.read_csv(out / "summary.csv")
    bn2 = summary[(summary.norm_tag == "bn") & (summary.batch_size == 2)].iloc[0]
    assert bn2.n == 3 and bn2.test_acc_last5_median_mean == pytest.approx(0.52)
    assert bn2.test_acc_last5_median_std == pytest.approx(0.02) and bn2.seeds == "0 1 2"
    assert bn2.steps_mean == 500  # 5 epochs x 100 steps
    none = summary[summary.norm_tag == "none"].iloc[0]
    assert none.n == 1 and none.n_diverged == 1 and none.test_acc_last5_median_mean == pytest.approx(0.30)


def test_markdown_table_cells_and_bold(report_dir):
    _, out = report_dir
    md = (out / "tables.md").read_text()
    acc = md.split("test accuracy (%)")[1].split("##")[0]
    assert "Setups in this table vary in: norm, batch_size." in acc
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in acc.splitlines() if line.startswith("| ") and "bs 2" not in line}
    assert rows["bn"] == ["52.00 ± 2.00 (3)", "**72.00** ± 2.00 (3)"]
    assert rows["gn"] == ["**61.00** ± 1.00 (3)", "70.00 ± 1.00 (3)"]
    assert rows["none"] == ["–", "30.00 (1) [1 diverged]"]  # a diverged run is never a zero
    err = md.split("test error (%)")[1].split("##")[0]
    assert "| gn | **39.00** ± 1.00 (3) | 30.00 ± 1.00 (3) |" in err
    assert "cifar10 (data 01234567, 5000 train / 1000 test) / convnet, 5 epochs" in md
    assert "| bn | 2 |" in md.split("## Speed")[1]


def test_latex_is_booktabs_and_balanced(report_dir):
    _, out = report_dir
    tex = (out / "tables.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\textbf{72.00} $\pm$ 2.00 (3)" in tex and "±" not in tex and "–" not in tex and "·" not in tex
    for body in re.findall(r"\\midrule\n(.*?)\\bottomrule", tex, re.S):
        widths = {line.count("&") for line in body.strip().splitlines()}
        assert len(widths) == 1  # every row has the header's number of columns
    if shutil.which("pdflatex"):
        doc = out / "doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex + "\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=out, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]


# --- setups are never pooled -------------------------------------------------------------------


def test_runs_differing_only_in_lr_are_two_rows(tmp_path):
    recs = seeds("bn", 32, [0.70, 0.72]) + seeds("bn", 32, [0.40, 0.42], base_lr=0.2)
    runs = write_runs(tmp_path / "runs", recs)
    out = tmp_path / "out"
    assert report_main([str(runs), "--out", str(out), "--quiet"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 and sorted(summary["optim.base_lr"]) == [0.02, 0.2]
    assert sorted(summary.test_acc_last5_median_mean.round(3)) == [0.41, 0.71]
    tex = (out / "tables.tex").read_text()
    assert r"bn $\cdot$ optim.base\_lr=0.2 & 41.00 $\pm$ 1.41 (2) \\" in tex and "·" not in tex
    md = (out / "tables.md").read_text()
    assert "vary in: batch_size, optim.base_lr" not in md  # one batch size here
    assert "Setups in this table vary in: optim.base_lr." in md
    assert "| bn · optim.base_lr=0.02 | **71.00** ± 1.41 (2) |" in md
    assert "| bn · optim.base_lr=0.2 | 41.00 ± 1.41 (2) |" in md


def test_four_seed0_runs_of_different_setups_are_four_rows(tmp_path):
    # The failure this guards against: four seed-0 BN runs (lr, augmentation, norm sites)
    # reported as one "mean ± std (4)".
    recs = [record("bn", 32, 0, 0.20), record("bn", 32, 0, 0.15, base_lr=0.1), record("bn", 32, 0, 0.25, augment="none"),
            record("bn", 32, 0, 0.18, norm_extra={"sites": ["conv1"]})]
    df = frame(recs)
    assert df.setup_id.nunique() == 4
    out = tmp_path / "out"
    assert report_main([str(write_runs(tmp_path / "runs", recs)), "--out", str(out), "--quiet"]) == 0
    md = (out / "tables.md").read_text()
    assert "(4)" not in md and md.count("(1) |") == 8  # 4 rows x (accuracy, error)
    assert "Setups in this table vary in: norm, data.augment, optim.base_lr." in md
    assert '| bn · data.augment=crop_flip, norm.sites=["conv1"], optim.base_lr=0.02 |' in md


def test_other_data_is_another_table(tmp_path):
    recs = seeds("bn", 32, [0.70, 0.72]) + seeds("bn", 32, [0.90, 0.92], fingerprint="fedcba9876543210")
    out = tmp_path / "out"
    assert report_main([str(write_runs(tmp_path / "runs", recs)), "--out", str(out), "--quiet"]) == 0
    md = (out / "tables.md").read_text()
    assert "## cifar10 (data 01234567, 5000 train / 1000 test)" in md
    assert "## cifar10 (data fedcba98, 5000 train / 1000 test)" in md
    assert "(2)" in md and "(4)" not in md


def test_paper_gn_never_pools_budgets():
    recs = (seeds("bn", 2, [0.50, 0.52, 0.54], epochs=5) + seeds("gn", 2, [0.60, 0.61, 0.62], epochs=5)
            + seeds("bn", 2, [0.30, 0.31, 0.32], epochs=6) + seeds("gn", 2, [0.33, 0.34, 0.35], epochs=6))
    tables = paper_gn_tables(frame(recs))
    assert len(tables) == 2
    five = next(t for label, t in tables.items() if "5 epochs" in label)
    assert five.loc[2, "paper_gap"] == pytest.approx(10.6)
    assert five.loc[2, "ours_gap"] == pytest.approx((100 - 52) - (100 - 61))
    lo, hi = five.loc[2, "ours_gap_ci"]
    assert lo < 9 < hi and five.loc[2, "n"] == "3/3" and pd.isna(five.loc[32, "ours_gap"])


def test_cli_paper_gn_prints_both(report_dir, capsys):
    runs, out = report_dir
    assert report_main([str(runs), "--out", str(out), "--paper", "gn", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "GN paper Table 2" in text and "+10.6" in text and "+9.00 [+4.84, +13.16]" in text


def test_schema1_records_are_read_and_kept_apart(tmp_path):
    old = record("bn", 32, 0, 0.5)
    old.update(schema=1, config=None, data_fingerprint=None, train_images=None, test_images=None, peak_mem_kind=None)
    path = tmp_path / "runs" / "old" / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    write_runs(tmp_path / "runs", [record("bn", 32, 1, 0.6)])
    df, problems = load_records(tmp_path / "runs")
    assert problems == [] and len(df) == 2
    df = setups.annotate(df)[0]
    assert df.setup_id.nunique() == 2 and "cifar10 (data not recorded)" in set(df.data_label)


# --- bad records -------------------------------------------------------------------------------


def test_corrupt_partial_mistyped_and_unfinished_records_are_listed_not_fatal(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs", seeds("bn", 32, [0.7, 0.71]))
    for name, text in (("a", '{"schema": 2, "status": "ok", "test_acc'),  # half-written
                       ("b", json.dumps({"schema": 2, "status": "ok"}))):  # partial
        (runs / "bad" / name).mkdir(parents=True)
        (runs / "bad" / name / "record.json").write_text(text)
    wrong = record("bn", 32, 5, 0.7)
    wrong["history"] = "not a list"
    (runs / "bad" / "d").mkdir(parents=True)
    (runs / "bad" / "d" / "record.json").write_text(json.dumps({**wrong, "schema": 2}))
    wrong_row = record("bn", 32, 6, 0.7)
    wrong_row["history"][1]["test_acc"] = "0.7"
    (runs / "bad" / "e").mkdir(parents=True)
    (runs / "bad" / "e" / "record.json").write_text(json.dumps({**wrong_row, "schema": 2}))
    (runs / "bad" / "c").mkdir(parents=True)
    (runs / "bad" / "c" / "config.yaml").write_text("batch_size: 2\n")  # unfinished
    (runs / "bad" / "c" / ".record.json.x.tmp").write_text("{")  # an atomic write in progress
    df, problems = load_records(runs)
    assert len(df) == 2
    assert any(p.startswith("bad/a: unreadable record.json (JSONDecodeError") for p in problems)
    assert any(p.startswith("bad/b: partial record: missing") for p in problems)
    assert "bad/d: field 'history' is not a list" in problems
    assert "bad/e: field 'history' item 1: 'test_acc' is not a number" in problems
    assert "bad/c: unfinished (no record.json yet)" in problems and len(problems) == 5
    assert report_main([str(runs), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "left out: bad/d: field 'history' is not a list" in printed and "Traceback" not in printed


def test_no_runs_is_one_clear_error(tmp_path, capsys):
    assert report_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"error: runs folder {tmp_path / 'nothing'} does not exist")
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1


def test_bad_margin_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        report_main([str(tmp_path), "--margin", "-1"])
    assert err.value.code == 2
    assert "argument --margin: -1 is not valid; allowed: points of accuracy, > 0 and < 100" in capsys.readouterr().err


def test_report_reads_no_training_code():
    code = ("import sys, normbench.report; "
            "bad = [m for m in ('torch', 'lightning', 'normbench.train', 'normbench.module') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_claims_md_states_the_setup_and_shows_paper_numbers(report_dir):
    _, out = report_dir
    text = (out / "claims.md").read_text()
    assert "## Study: cifar10 (data 01234567, 5000 train / 1000 test) / convnet, 5 epochs" in text
    assert "- Holds for: data.augment=crop_flip, data.fingerprint=0123456789abcdef" in text
    assert "optim.base_lr=0.02" in text and "- Varies: norm (none, bn, gn), batch_size (2, 32)" in text
    assert "Paper: ResNet-50 ImageNet val error: batch 4 BN 27.3 vs GN 24.2; batch 2 BN 34.7 vs GN 24.1" in text
    assert "never that a paper is wrong" in text and "refuted" not in text
    assert len(claims.CLAIMS) == text.count("- Verdict:")


def test_bn_rows_show_three_evaluations_side_by_side(tmp_path):
    recs = seeds("bn", 32, [0.70, 0.72], stat_batch=2) + seeds("gn", 32, [0.69, 0.71])
    for rec, (precise, batch) in zip(recs[:2], [(0.74, 0.60), (0.76, 0.62)]):
        rec["bn_eval"] = {"stat_batch": 2, "precise_acc": precise, "precise_images": 2048, "batch_acc": batch}
    runs = write_runs(tmp_path / "runs", recs)
    out = tmp_path / "out"
    assert report_main([str(runs), "--out", str(out), "--quiet"]) == 0
    md = (out / "tables.md").read_text()
    section = md.split("## Batch-dependent norms evaluated three ways")[1].split("## Speed")[0]
    rows = [line for line in section.splitlines() if line.startswith("| cifar10")]
    assert len(rows) == 1  # GN has no batch statistics: not in this table
    assert rows[0].endswith("| bn | 32 | 2 | 71.00 ± 1.41 | 75.00 ± 1.41 | 61.00 ± 1.41 | 2 |")
    summary = pd.read_csv(out / "summary.csv")
    bn = summary[summary.norm_tag == "bn"].iloc[0]
    assert bn.precise_bn_test_acc_mean == pytest.approx(0.75) and bn.batch_stats_test_acc_mean == pytest.approx(0.61)
    assert summary[summary.norm_tag == "gn"].precise_bn_test_acc_mean.isna().all()


def test_budgets_are_tables_of_their_own(tmp_path):
    budget = seeds("bn", 2, [0.60, 0.62]) + seeds("bn", 32, [0.70, 0.72])
    for rec in budget:
        rec["config"]["budget"] = {"steps": 500}
        rec["run_key"] += "b"
    epochs = seeds("bn", 32, [0.50, 0.52])
    runs = write_runs(tmp_path / "runs", budget + epochs)
    out = tmp_path / "out"
    assert report_main([str(runs), "--out", str(out), "--quiet"]) == 0
    md = (out / "tables.md").read_text()
    tables = re.findall(r"^## (.*): test accuracy", md, flags=re.M)
    assert [t.rsplit(" / ", 1)[1] for t in tables] == ["convnet, 5 epochs", "convnet, 500 steps"]


def test_pdfs_embed_truetype_fonts_not_type3(report_dir):
    for name in ("curves", "error_vs_batch", "speed"):
        pdf = (report_dir[1] / f"{name}.pdf").read_bytes()
        assert b"/FontType 3" not in pdf and b"/Subtype /Type3" not in pdf
        assert b"/Subtype /TrueType" in pdf or b"/Subtype /Type0" in pdf


def test_a_ghost_batch_figure_plots_error_against_the_statistics_batch(tmp_path):
    """All arms at SGD batch 32: BN is one line over its statistics batches, GN (no batch
    statistic) a flat line across them, instead of every arm at x = 32."""
    from normbench import report
    from normbench.report import summarize

    recs = (seeds("bn", 32, [0.60, 0.61], stat_batch=2) + seeds("bn", 32, [0.70, 0.71], stat_batch=8)
            + seeds("bn", 32, [0.72, 0.73], stat_batch=32) + seeds("gn", 32, [0.65, 0.66]))
    df, _ = load_records(write_runs(tmp_path / "runs", recs))
    summary = summarize(setups.annotate(df)[0])
    assert report._x_axis(summary) == ("stat_batch", "statistics batch (images per batch statistic; SGD batch 32)")
    drawn: dict[str, list[float]] = {}

    def draw(ax, r, label, style):
        drawn[label] = list(r.x)
        ax.plot(r.x, r.x, label=label)

    report._against_batch_size(summary, tmp_path, "fig", "y", draw)
    assert drawn == {"bn": [2, 8, 32], "gn": [2, 32]} and (tmp_path / "fig.png").exists()
    # A batch-size study keeps its batch-size axis.
    df, _ = load_records(write_runs(tmp_path / "bs", seeds("bn", 2, [0.5, 0.5]) + seeds("bn", 32, [0.7, 0.7])))
    assert report._x_axis(summarize(setups.annotate(df)[0]))[0] == "batch_size"


def test_plain_bn_beside_ghost_batch_bn_is_labelled_bn(tmp_path):
    """Plain BN's record leaves ``norm.stat_batch`` out (its default); its row is ``bn``, the
    ghost-batch rows name their statistics batch, and no row says ``null``."""
    recs = seeds("bn", 32, [0.60, 0.61], stat_batch=2) + seeds("bn", 32, [0.70, 0.71]) + seeds("gn", 32, [0.65, 0.66])
    df, _ = load_records(write_runs(tmp_path / "runs", recs))
    labels = sorted(setups.annotate(df)[0].row_label.unique())
    assert labels == ["bn", "bn · norm.stat_batch=2", "gn"]
    out = tmp_path / "out"
    assert report_main([str(tmp_path / "runs"), "--out", str(out), "--quiet"]) == 0
    md = (out / "tables.md").read_text()
    assert "| bn | **70.50**" in md and "| bn · norm.stat_batch=2 | 60.50" in md and "null" not in md
