"""The report stage on records with known values: tables, bold, LaTeX, claims, bad records."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from normbench import claims
from normbench.records import FIELDS, load_records, write_record
from normbench.report import main as report_main
from normbench.report import paper_gn_table


def record(tag: str, bs: int, seed: int, acc: float | None, status: str = "ok", norm: str | None = None,
           epochs: int = 5, to_target: int | None = 2, model: str = "convnet") -> dict:
    history = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                "test_acc": (acc or 0) - 0.01 * (epochs - e), "lr": 0.1, "epoch_s": 2.0, "train_s": 1.5,
                "train_images": 1000} for e in range(1, epochs + 1)] if acc is not None else []
    return {
        "run_key": f"cifar10/{model}/{tag}/bs{bs}/seed{seed}-0000000{seed}", "config_hash": f"0000000{seed}",
        "status": status, "dataset": "cifar10", "model": model, "norm": norm or tag.split("_")[0], "norm_tag": tag,
        "norm_params": {}, "placement": "pre_act", "batch_size": bs, "lr": 0.1 * bs / 32, "base_lr": 0.1,
        "epochs": epochs, "seed": seed, "augment": "crop_flip", "test_acc": acc, "test_loss": 1.0,
        "test_acc_last5_median": acc, "best_test_acc": acc, "epochs_to_target": to_target, "target_acc": 0.6,
        "history": history, "train_images_per_s": 1000.0 * bs ** 0.5, "epoch_s": 2.0, "total_s": 10.0,
        "peak_mem_mb": 100.0, "params": 89706, "device": "test", "accelerator": "cpu", "precision": "32-true",
        "torch": "x", "lightning": "x", "normbench": "x", "git_rev": None, "started_at": None, "finished_at": None,
        "error": None if status == "ok" else "boom", "diverged_at_step": 7 if status == "diverged" else None,
    }


def write_runs(root: Path, recs: list[dict]) -> Path:
    for rec in recs:
        write_record(root / rec["run_key"], rec)
    return root


def frame(recs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(recs)


def seeds(tag: str, bs: int, accs: list[float], **kw) -> list[dict]:
    return [record(tag, bs, s, a, **kw) for s, a in enumerate(accs)]


# --- tables ----------------------------------------------------------------------------------


@pytest.fixture
def report_dir(tmp_path: Path) -> tuple[Path, Path]:
    recs = (seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.60, 0.61, 0.62])
            + seeds("bn", 32, [0.70, 0.72, 0.74]) + seeds("gn", 32, [0.68, 0.69, 0.70])
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
    summary = pd.read_csv(out / "summary.csv")
    bn2 = summary[(summary.norm_tag == "bn") & (summary.batch_size == 2)].iloc[0]
    assert bn2.n == 3 and bn2.test_acc_last5_median_mean == pytest.approx(0.52)
    assert bn2.test_acc_last5_median_std == pytest.approx(0.02)
    none = summary[summary.norm_tag == "none"].iloc[0]
    assert none.n == 1 and none.n_diverged == 1 and none.test_acc_last5_median_mean == pytest.approx(0.30)


def test_markdown_table_cells_and_bold(report_dir):
    _, out = report_dir
    md = (out / "tables.md").read_text()
    acc = md.split("test accuracy (%)")[1].split("##")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in acc.splitlines() if line.startswith("| ") and "bs 2" not in line}
    assert rows["bn"] == ["52.00 ± 2.00 (3)", "**72.00** ± 2.00 (3)"]
    assert rows["gn"] == ["**61.00** ± 1.00 (3)", "69.00 ± 1.00 (3)"]
    assert rows["none"] == ["–", "30.00 (1) [1 diverged]"]  # a diverged run is never a zero
    err = md.split("test error (%)")[1].split("##")[0]
    assert "| gn | **39.00** ± 1.00 (3) | 31.00 ± 1.00 (3) |" in err
    assert "| cifar10 | convnet | bn | 2 |" in md.split("## Speed")[1]


def test_latex_is_booktabs_and_balanced(report_dir):
    _, out = report_dir
    tex = (out / "tables.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\textbf{72.00} $\pm$ 2.00 (3)" in tex and "±" not in tex and "–" not in tex
    for body in re.findall(r"\\midrule\n(.*?)\\bottomrule", tex, re.S):
        widths = {line.count("&") for line in body.strip().splitlines()}
        assert len(widths) == 1  # every row has the header's number of columns
    if shutil.which("pdflatex"):
        doc = out / "doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex + "\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=out, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_corrupt_partial_and_unfinished_records_are_listed_not_fatal(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs", seeds("bn", 32, [0.7, 0.71]))
    (runs / "bad" / "a").mkdir(parents=True)
    (runs / "bad" / "a" / "record.json").write_text('{"schema": 1, "status": "ok", "test_acc')  # half-written
    (runs / "bad" / "b").mkdir(parents=True)
    (runs / "bad" / "b" / "record.json").write_text(json.dumps({"schema": 1, "status": "ok"}))  # partial
    (runs / "bad" / "c").mkdir(parents=True)
    (runs / "bad" / "c" / "config.yaml").write_text("batch_size: 2\n")  # unfinished
    (runs / "bad" / "c" / ".record.json.x.tmp").write_text("{")  # an atomic write in progress
    df, problems = load_records(runs)
    assert len(df) == 2
    assert any(p.startswith("bad/a: unreadable record.json (JSONDecodeError") for p in problems)
    assert any(p.startswith("bad/b: partial record: missing") for p in problems)
    assert "bad/c: unfinished (no record.json yet)" in problems and len(problems) == 3
    assert report_main([str(runs), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "left out: bad/a: unreadable record.json" in printed and "left out: bad/c: unfinished" in printed


def test_no_runs_is_one_clear_error(tmp_path, capsys):
    assert report_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"error: runs folder {tmp_path / 'nothing'} does not exist")
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1


def test_report_reads_no_training_code():
    code = ("import sys, normbench.report; "
            "bad = [m for m in ('torch', 'lightning', 'normbench.train', 'normbench.module') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_paper_gn_table_gap():
    df = frame(seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.60, 0.61, 0.62]))
    t = paper_gn_table(df)
    assert t.loc[2, "paper_gap"] == pytest.approx(10.6)
    assert t.loc[2, "ours_gap"] == pytest.approx((100 - 52) - (100 - 61))
    assert t.loc[2, "n"] == "3/3" and pd.isna(t.loc[32, "ours_gap"])


def test_cli_paper_gn_prints_both(report_dir, capsys):
    runs, out = report_dir
    assert report_main([str(runs), "--out", str(out), "--paper", "gn", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "GN paper Table 2" in text and "+10.6" in text and "+9.00 ± 1.29" in text


# --- claims ----------------------------------------------------------------------------------


def verdict(check, recs) -> claims.Verdict:
    return check(frame(recs))


def test_gn_beats_bn_small_batch_three_ways():
    supported = seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.60, 0.61, 0.62])
    v = verdict(claims.gn_beats_bn_small_batch, supported)
    assert v.verdict == "supported" and "gn at batch 2" in v.numbers[0]
    refuted = seeds("bn", 4, [0.70, 0.71, 0.72]) + seeds("gn", 4, [0.60, 0.61, 0.62])
    assert verdict(claims.gn_beats_bn_small_batch, refuted).verdict == "refuted"
    noisy = seeds("bn", 2, [0.50, 0.60, 0.55]) + seeds("gn", 2, [0.52, 0.58, 0.57])
    v = verdict(claims.gn_beats_bn_small_batch, noisy)
    assert v.verdict == "inconclusive" and "within noise" in v.why
    one_seed = seeds("bn", 2, [0.5]) + seeds("gn", 2, [0.6])
    v = verdict(claims.gn_beats_bn_small_batch, one_seed)
    assert v.verdict == "inconclusive" and "only 1 seed of gn at batch 2" in v.why
    missing = seeds("bn", 32, [0.5, 0.6]) + seeds("gn", 32, [0.6, 0.7])
    assert "no batch size <= 4 has both bn and gn" in verdict(claims.gn_beats_bn_small_batch, missing).why
    diverged = seeds("bn", 2, [0.5, 0.52]) + [record("bn", 2, 2, None, status="diverged")] + seeds("gn", 2, [0.6, 0.61])
    v = verdict(claims.gn_beats_bn_small_batch, diverged)
    assert v.verdict == "inconclusive" and "1 run(s) of bn at batch 2 diverged" in v.why


def test_bn_degrades_gn_flat():
    flat_gn = (seeds("bn", 2, [0.50, 0.51, 0.52]) + seeds("bn", 32, [0.70, 0.71, 0.72])
               + seeds("gn", 2, [0.68, 0.69, 0.70]) + seeds("gn", 32, [0.69, 0.70, 0.71]))
    v = verdict(claims.bn_degrades_gn_flat, flat_gn)
    assert v.verdict == "supported"
    assert v.numbers[2].startswith("BN - GN accuracy gap: +1.00 points at batch 32, -18.00 at batch 2 (change -19.00 ± ")
    gn_degrades = (seeds("bn", 2, [0.70, 0.71, 0.72]) + seeds("bn", 32, [0.70, 0.71, 0.72])
                   + seeds("gn", 2, [0.50, 0.51, 0.52]) + seeds("gn", 32, [0.70, 0.71, 0.72]))
    v = verdict(claims.bn_degrades_gn_flat, gn_degrades)
    assert v.verdict == "refuted" and v.why.startswith("GN's accuracy moves more than BN's")  # the opposite holds
    # As in the committed example: BN *gains* at small batches, GN gains even more.
    bn_gains = (seeds("bn", 2, [0.49, 0.50, 0.51]) + seeds("bn", 128, [0.44, 0.45, 0.46])
                + seeds("gn", 2, [0.42, 0.44, 0.46]) + seeds("gn", 128, [0.18, 0.19, 0.20]))
    v = verdict(claims.bn_degrades_gn_flat, bn_gains)
    assert v.verdict == "refuted" and v.why.startswith("BN gains accuracy as the batch shrinks from 128 to 2")
    bn_loses_less = (seeds("bn", 2, [0.68, 0.69, 0.70]) + seeds("bn", 32, [0.70, 0.71, 0.72])
                     + seeds("gn", 2, [0.50, 0.51, 0.52]) + seeds("gn", 32, [0.70, 0.71, 0.72]))
    v = verdict(claims.bn_degrades_gn_flat, bn_loses_less)
    assert v.verdict == "refuted" and v.why.startswith("GN's accuracy moves more than BN's")
    assert verdict(claims.bn_degrades_gn_flat, flat_gn[:6]).verdict == "inconclusive"


def test_table1_order():
    ordered = (seeds("bn", 32, [0.80, 0.81, 0.82]) + seeds("gn", 32, [0.75, 0.76, 0.77])
               + seeds("ln", 32, [0.70, 0.71, 0.72]) + seeds("in", 32, [0.60, 0.61, 0.62]))
    assert verdict(claims.table1_order, ordered).verdict == "supported"
    swapped = ordered[:3] + seeds("gn", 32, [0.60, 0.61, 0.62]) + seeds("ln", 32, [0.70, 0.71, 0.72]) \
        + seeds("in", 32, [0.55, 0.56, 0.57])
    v = verdict(claims.table1_order, swapped)
    assert v.verdict == "inconclusive" and v.why.startswith("comparisons disagree")
    v = verdict(claims.table1_order, ordered[:9])
    assert v.verdict == "inconclusive" and "no runs of in at batch 32" in v.why


def test_lrn_claims():
    recs = (seeds("none", 100, [0.60, 0.61, 0.62]) + seeds("lrn", 100, [0.64, 0.65, 0.66], norm="lrn")
            + seeds("lrn_within", 100, [0.63, 0.64, 0.65], norm="lrn") + seeds("bn", 100, [0.70, 0.71, 0.72]))
    assert verdict(claims.lrn_beats_none, recs).verdict == "supported"
    assert verdict(claims.bn_beats_lrn, recs).verdict == "supported"
    worse = seeds("none", 100, [0.70, 0.71, 0.72]) + seeds("lrn_within", 100, [0.60, 0.61, 0.62], norm="lrn")
    assert verdict(claims.lrn_beats_none, worse).verdict == "refuted"
    assert "no batch size has both an LRN run" in verdict(claims.bn_beats_lrn, worse).why


def test_target_epochs_claim():
    recs = seeds("none", 32, [0.6, 0.6, 0.6], to_target=None) + seeds("bn", 32, [0.7, 0.7, 0.7], to_target=1)
    v = verdict(claims.norm_reaches_target_sooner, recs)
    assert v.verdict == "supported" and "none at batch 32 6.00 ± 0.00 epochs (n=3)" in v.numbers[0]  # never reached: epochs + 1
    slower = seeds("none", 32, [0.6] * 3, to_target=1) + seeds("bn", 32, [0.7] * 3, to_target=4)
    assert verdict(claims.norm_reaches_target_sooner, slower).verdict == "refuted"


def test_claims_md_shows_paper_numbers_and_reasons(report_dir):
    _, out = report_dir
    text = (out / "claims.md").read_text()
    assert "## GN beats BN at small batch sizes (4 and below) (cifar10 / convnet, 5 epochs)" in text
    assert "Paper: ResNet-50 ImageNet val error: batch 4 BN 27.3 vs GN 24.2; batch 2 BN 34.7 vs GN 24.1" in text
    assert "Verdict: **supported**" in text
    assert "gn at batch 2 61.00 ± 1.00% (n=3) vs bn at batch 2 52.00 ± 2.00% (n=3)" in text
    assert len(claims.CLAIMS) == text.count("- Verdict:")
