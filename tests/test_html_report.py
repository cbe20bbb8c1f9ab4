"""eval/report.html: content from a real Ignite evaluation, and rendering in headless Chromium."""

import json
import re

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from browser import CHROMIUM, SKIP_REASON, ink, render
from scripts.handlers.html_report import HtmlReport
from scripts.handlers.reports import ScoreReport

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)


def synthetic_batches(n_batches=4, batch=10, seed=0):
    """Evaluator-shaped outputs: abnormals brighter (so mean intensity separates them) and scored higher."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        labels = np.array([i % 2 for i in range(batch)])
        images = rng.normal(-0.5, 0.1, (batch, 1, 16, 16)) + 0.4 * labels[:, None, None, None]
        base = labels + rng.normal(0, 0.6, batch)
        maps = {
            name: torch.tensor(
                np.abs(rng.normal(0, 1, (batch, 1, 16, 16))) * (1 + s)[:, None, None, None], dtype=torch.float32
            )
            for name, s in (("A_rec", 0.2 * base), ("A_inter", base), ("R_dual", 1.5 * base))
        }
        out.append(
            {
                "image": torch.tensor(images, dtype=torch.float32),
                "maps": maps,
                "scores": {k: v.mean(dim=(1, 2, 3)) for k, v in maps.items()},
                "member_A_rec": torch.tensor(rng.normal(0, 1, (2, batch)), dtype=torch.float32),
                "label": torch.tensor(labels),
                "mask": None,
                "filename": [f"/data/test/img_{b}_{i}.png" for i in range(batch)],
            }
        )
    return out


def evaluate(tmp_path, threshold=None, extra_metrics=None):
    """Run ScoreReport and HtmlReport on a real Ignite engine over the synthetic batches."""
    batches = synthetic_batches()
    ckpt = tmp_path / "run" / "models"
    ckpt.mkdir(parents=True)
    if threshold is not None:
        (ckpt / "threshold.json").write_text(json.dumps(threshold))
    normals = []
    for i in range(5):  # training normals on disk, read through a real MONAI transform for the L2 baseline
        path = tmp_path / f"normal_{i}.png"
        Image.fromarray(np.full((16, 16), 60 + i, np.uint8)).save(path)
        normals.append({"image": str(path), "label": 0})
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    prep = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=-1, b_max=1),
        ]
    )
    engine = Engine(lambda e, batch: batch)
    eval_dir = tmp_path / "run" / "eval"
    ScoreReport(eval_dir, n_boot=50, print_table=False).attach(engine)
    if extra_metrics:  # stands in for keys another handler adds to metrics.json before the report reads it

        @engine.on(Events.COMPLETED)
        def add(_):
            path = eval_dir / "metrics.json"
            path.write_text(json.dumps(extra_metrics(json.loads(path.read_text()))))

    report = HtmlReport(eval_dir, ckpt_dir=ckpt, normal_entries=normals, preprocessing=prep, gallery_size=3, n_boot=50)
    report.attach(engine)
    engine.run(batches, max_epochs=1)
    return eval_dir, batches


def test_report_holds_metrics_operating_point_galleries_and_baselines(tmp_path):
    threshold = {
        "score": "R_dual",
        "threshold": 1.2,
        "thresholds": {"R_dual": 1.2, "A_inter": 0.9},
        "specificity": 0.95,
        "n_validation": 12,
    }

    def extras(metrics):
        metrics["R_dual"]["refiner_gain"] = 0.07
        metrics["A_inter"]["patch_response"] = {"ratio": 1.5, "responds": True}
        metrics["stage2_diagnostics"] = {"synthetic_auc": 0.91}
        return metrics

    eval_dir, batches = evaluate(tmp_path, threshold, extras)
    text = (eval_dir / "report.html").read_text()
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    for name in ("A_rec", "A_inter", "R_dual"):
        assert f"<td>{name}</td>" in text and f"{metrics[name]['auc']:.3f}" in text
    lo, hi = metrics["R_dual"]["auc_ci95"]
    assert f"{lo:.3f} - {hi:.3f}" in text
    assert "refiner_gain" in text and "0.070" in text and "synthetic_auc" in text  # unknown keys shown generically
    assert re.search(
        r"<h3>patch_response</h3><table><tr><th>score</th><th>ratio</th><th>responds</th></tr>"
        r"<tr><td>A_inter</td><td class='n'>1\.500</td><td>True</td></tr></table>",
        text,
    )
    # operating point: the stored threshold's sensitivity/specificity on these test scores
    scores = torch.cat([b["scores"]["R_dual"] for b in batches]).numpy()
    labels = torch.cat([b["label"] for b in batches]).numpy()
    sens, spec = (scores[labels == 1] > 1.2).mean(), (scores[labels == 0] <= 1.2).mean()
    assert re.search(
        rf"R_dual \(deployed\)</td><td>1\.2</td><td class='n'>{sens:.3f}</td><td class='n'>{spec:.3f}", text
    )
    assert "<td>A_inter</td><td>0.9</td>" in text
    # galleries of the deployed score, and the baselines (mean intensity separates these classes fully)
    assert "Score: <b>R_dual</b>" in text and text.count("<h3>Errors:") == 2 and "<h3>Best detections" in text
    names = [f"img_{b}_{i}.png" for b in range(len(batches)) for i in range(len(batches[b]["label"]))]
    order = np.argsort(-scores, kind="stable")
    expected = {
        "normal_high": [names[i] for i in order if labels[i] == 0][:3],
        "abnormal_high": [names[i] for i in order if labels[i] == 1][:3],
        "abnormal_low": [names[i] for i in order[::-1] if labels[i] == 1][:3],
    }
    for gallery, files in expected.items():
        listed = re.search(rf"id='{gallery}'>([^<]*)<", text).group(1)
        assert re.findall(r"(img_\d+_\d+\.png)", listed) == files
    assert re.search(r"<td>mean intensity</td><td class='n'>1\.000</td>", text)
    assert "<td>L2 to mean normal</td>" in text
    # self-contained: every image embedded, nothing fetched
    assert not re.search(r"""(src|href)=['"](?!data:)""", text) and "http" not in text
    for name in ("roc.png", "pr.png"):
        assert Image.open(eval_dir / name).size[0] > 100
    assert text.count("data:image/png;base64,") >= 6  # roc, pr, histograms, three galleries


def test_without_a_threshold_the_report_says_so_and_uses_a_fallback_score(tmp_path):
    eval_dir, _ = evaluate(tmp_path)
    text = (eval_dir / "report.html").read_text()
    assert "No <code>models/threshold.json</code>" in text and "Score: <b>R_dual</b>" in text


@needs_chromium
def test_chromium_flags_blank_pages_and_console_errors(tmp_path):
    """The checks used on the report can fail: a blank page and a page with a script error."""
    blank, broken = tmp_path / "blank.html", tmp_path / "broken.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    broken.write_text(
        "<!DOCTYPE html><html><body><h1>x</h1><script>console.error('boom'); nothing();</script></body></html>"
    )
    assert render(blank, tmp_path / "blank.png", tmp_path / "p1") == []
    assert ink(tmp_path / "blank.png")[0] < 0.001
    messages = render(broken, tmp_path / "broken.png", tmp_path / "p2")
    assert any("boom" in m for m in messages) and any("Uncaught" in m for m in messages)


@needs_chromium
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    eval_dir, _ = evaluate(tmp_path, {"score": "A_inter", "threshold": 0.9, "specificity": 0.95, "n_validation": 12})
    png = tmp_path / "report.png"
    assert render(eval_dir / "report.html", png, tmp_path / "profile") == []
    covered, spread = ink(png)
    assert covered > 0.05 and spread > 20  # text, tables and figures, not an empty page


@pytest.mark.slow
def test_the_demo_workflows_write_a_report_that_chromium_renders(cxr_run, tmp_path):
    _, run = cxr_run
    page = run / "eval" / "report.html"
    text = page.read_text()
    threshold = json.loads((run / "models" / "threshold.json").read_text())
    assert f"{threshold['score']} (deployed)" in text and "Trivial baselines" in text and "The split" in text
    assert (run / "eval" / "roc.png").is_file() and (run / "eval" / "pr.png").is_file()
    if CHROMIUM is None:
        pytest.skip(SKIP_REASON)
    png = tmp_path / "demo_report.png"
    assert render(page, png, tmp_path / "profile") == []
    assert ink(png)[0] > 0.05
