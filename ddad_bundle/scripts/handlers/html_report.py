"""``eval/report.html``: the evaluation as one self-contained page to look at.

An evaluation handler attached after :class:`scripts.handlers.reports.ScoreReport` on the same
evaluator. At the end of the run it reads the ``metrics.json`` ScoreReport has just written (every
key it holds, so diagnostics added there appear without changes here) and writes one HTML file
with every figure embedded as a data URI, no script and no external resource, so it opens
offline and can be mailed as it is:

- the metrics table with the bootstrap 95% intervals (and every further per-score key);
- ROC and precision-recall curves of every score on one figure each (also ``roc.png``, ``pr.png``);
- the score histograms (``histograms.png`` when ScoreReport drew it);
- the operating point of the stored decision threshold (``models/threshold.json``, chosen on
  validation normals): sensitivity and specificity on the test set for the deployed score and,
  from its ``thresholds`` table, for every other score;
- galleries of the deployed score's errors (highest-scoring normals, lowest-scoring abnormals) and
  best detections (highest-scoring abnormals), each image with its map overlaid;
- trivial baselines on the same preprocessed test images: mean intensity, intensity standard
  deviation, and L2 distance to the mean training normal (D_n). A baseline with an AUC far from
  0.5 (either way) means the classes differ in something a detector needs no anomaly model for;
- the split report (``split_report.json``) and any non-score entries of ``metrics.json``.

Example (config, in evaluate.json's ``handlers`` after ScoreReport)::

    {"_target_": "scripts.handlers.html_report.HtmlReport", "output_dir": "@eval_dir",
     "ckpt_dir": "@ckpt_dir", "normal_entries": "$scripts.data.splits.datalist(@split.normal)",
     "preprocessing": "@preprocessing"}
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
import logging
import time
from itertools import count
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from ..runtime.files import write_text_atomic  # noqa: E402
from ..scoring.metrics import summarize_scores  # noqa: E402

logger = logging.getLogger("ddad")

KNOWN_COLUMNS = ("auc", "auc_ci95", "ap", "f1_max", "sens_at_spec95", "chi2", "pixel_auroc")
FALLBACK_SCORES = ("R_dual", "R_intra", "A_inter", "A_intra", "A_rec")  # gallery score without threshold.json
BASELINES = ("mean intensity", "intensity std", "L2 to mean normal")
GALLERIES = (
    ("normal_high", "Errors: highest-scoring normals (false alarms first)"),
    ("abnormal_low", "Errors: lowest-scoring abnormals (misses first)"),
    ("abnormal_high", "Best detections: highest-scoring abnormals"),
)


class HtmlReport:
    """Writes ``<output_dir>/report.html`` (and ``roc.png``, ``pr.png``) when evaluation completes.

    Args:
        output_dir: the evaluation folder, where ScoreReport writes ``metrics.json``.
        ckpt_dir: the run's ``models/`` folder, for ``threshold.json`` (optional).
        normal_entries: MONAI dataset dicts of the training normals D_n, for the L2 baseline.
        preprocessing: the transform the test images went through, applied to ``normal_entries``.
        gallery_size: images per gallery.
        split_report: ``split_report.json`` of the run (default: beside ``output_dir``).
        n_boot, seed: bootstrap of the baselines' AUC intervals (as ScoreReport's).
    """

    def __init__(
        self,
        output_dir,
        ckpt_dir=None,
        normal_entries=None,
        preprocessing=None,
        gallery_size: int = 6,
        split_report=None,
        n_boot: int = 1000,
        seed: int = 0,
        batch_size: int = 64,
        title: str = "",
    ):
        self.output_dir = Path(output_dir)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.normal_entries = normal_entries or []
        self.preprocessing = preprocessing
        self.gallery_size = int(gallery_size)
        self.split_report = Path(split_report) if split_report else self.output_dir.parent / "split_report.json"
        self.n_boot, self.seed, self.batch_size = n_boot, seed, batch_size
        self.title = title or self.output_dir.parent.name
        self.path = self.output_dir / "report.html"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    # ------------------------------------------------------------------ collecting

    def reset(self, engine: Engine) -> None:
        self.threshold = self._read_threshold()
        self.labels, self.scores, self.baselines = [], {}, {name: [] for name in BASELINES}
        self.heaps = {name: [] for name, _ in GALLERIES}
        self.tiebreak = count()  # heap entries never compare their arrays
        self.mean_normal = self._mean_normal()
        self.gallery_score = None

    def _read_threshold(self):
        path = self.ckpt_dir / "threshold.json" if self.ckpt_dir else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    def _mean_normal(self):
        """Pixel-wise mean of the preprocessed training normals, (C, H, W), or None without them."""
        if not self.normal_entries or self.preprocessing is None:
            return None
        from ..data.cache import evaluation_loader

        total, n = None, 0
        for batch in evaluation_loader(
            self.normal_entries, self.preprocessing, "normal (D_n), for the L2 baseline", self.batch_size
        ):
            images = torch.as_tensor(batch["image"]).float()
            total = images.sum(0) if total is None else total + images.sum(0)
            n += len(images)
        return (total / n).numpy()

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        scores = {k: v.detach().float().cpu().numpy() for k, v in output["scores"].items()}
        if self.gallery_score is None:
            self.gallery_score = self._choose_score(list(scores), list(output.get("maps") or {}))
        labels = output["label"].detach().cpu().numpy().astype(int)
        images = output["image"].detach().float().cpu().numpy()
        names = output.get("filename") or [""] * len(labels)
        maps = output.get("maps", {}).get(self.gallery_score)
        maps = None if maps is None else maps.detach().float().cpu().numpy()
        for name, values in scores.items():
            self.scores.setdefault(name, []).extend(values.tolist())
        self.labels.extend(labels.tolist())
        flat = images.reshape(len(images), -1)
        self.baselines["mean intensity"].extend(flat.mean(1).tolist())
        self.baselines["intensity std"].extend(flat.std(1).tolist())
        if self.mean_normal is not None:
            self.baselines["L2 to mean normal"].extend(
                np.linalg.norm(flat - self.mean_normal.reshape(1, -1), axis=1).tolist()
            )
        for i, label in enumerate(labels if maps is not None else []):  # a score without maps has no gallery
            s = float(scores[self.gallery_score][i])
            item = (str(names[i]), label, s, images[i].mean(0), maps[i, 0])
            for heap_name, key in (
                ("normal_high", s if label == 0 else None),
                ("abnormal_low", -s if label == 1 else None),
                ("abnormal_high", s if label == 1 else None),
            ):
                if key is not None:
                    self._push(self.heaps[heap_name], key, item)

    def _push(self, heap: list, key: float, item) -> None:
        entry = (key, next(self.tiebreak), item)
        if len(heap) < self.gallery_size:
            heapq.heappush(heap, entry)
        elif key > heap[0][0]:
            heapq.heapreplace(heap, entry)

    def _choose_score(self, names: list[str], mapped: list[str]) -> str:
        """The deployed score (threshold.json) when it has maps, else the first score with maps (the
        fallback order first), else the deployed or first score (then there is no gallery)."""
        stored = (self.threshold or {}).get("score")
        for candidates in ([stored], FALLBACK_SCORES, names):
            found = next((n for n in candidates if n in names and n in mapped), None)
            if found:
                return found
        return stored if stored in names else names[0]

    # ------------------------------------------------------------------ writing

    def write(self, engine: Engine) -> None:
        if not self.labels:
            return  # ScoreReport already refuses an empty test set with the reason
        labels = np.asarray(self.labels)
        metrics_path = self.output_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        scores = {name: np.asarray(values) for name, values in self.scores.items()}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        roc_png, pr_png = curve_figures(scores, labels)
        (self.output_dir / "roc.png").write_bytes(roc_png)
        (self.output_dir / "pr.png").write_bytes(pr_png)
        sections = [
            self._header(labels),
            self._split_section(),
            metrics_section(metrics),
            self._operating_section(scores, labels),
            figure_section(
                "ROC and precision-recall curves",
                [("ROC curves of every score", roc_png), ("Precision-recall curves of every score", pr_png)],
            ),
            self._histogram_section(),
            self._gallery_section(),
            self._baseline_section(labels),
            diagnostics_section(metrics),
        ]
        write_text_atomic(self.path, page(f"DDAD evaluation: {self.title}", sections))
        logger.info("report: %s", self.path)
        print(f"report written to {self.path}")

    def _header(self, labels: np.ndarray) -> str:
        n_abn = int(labels.sum())
        return (
            f"<p>{len(labels)} test images ({len(labels) - n_abn} normal, {n_abn} abnormal), evaluated "
            f"{html.escape(time.strftime('%Y-%m-%d %H:%M'))}; run folder <code>{html.escape(str(self.output_dir.parent))}"
            "</code>. AUC intervals: stratified bootstrap, 95%.</p>"
        )

    def _split_section(self) -> str:
        if not self.split_report.is_file():
            return ""
        report = json.loads(self.split_report.read_text())
        c, dup = report.get("counts", {}), report.get("duplicates", {})
        rows = [[k, v] for k, v in c.items()] + [["D_u anomaly rate used", report.get("unlabeled_anomaly_rate")]]
        text = table(["set", "images"], rows)
        for pair, n in (dup.get("across_sets") or {}).items():
            text += (
                f"<p class='warn'>{n} pixel-identical image(s) in both {html.escape(pair.replace('/', ' and '))}: "
                + html.escape("; ".join(dup.get("examples", {}).get(pair, [])))
                + "</p>"
            )
        if report.get("dropped"):
            text += f"<p>{len(report['dropped'])} duplicate(s) dropped before training (drop_duplicates).</p>"
        return section("The split", f"<p><code>{html.escape(str(report.get('source', '')))}</code></p>" + text)

    def _operating_section(self, scores: dict, labels: np.ndarray) -> str:
        if not self.threshold:
            return section(
                "Operating point",
                "<p>No <code>models/threshold.json</code> (stage 2 stores it): no decision threshold to evaluate.</p>",
            )
        table_ = dict(self.threshold.get("thresholds") or {})
        table_.setdefault(self.threshold["score"], self.threshold["threshold"])
        rows = []
        for name, t in table_.items():
            if name not in scores:
                continue
            s = scores[name]
            sens = float((s[labels == 1] > t).mean()) if (labels == 1).any() else float("nan")
            spec = float((s[labels == 0] <= t).mean()) if (labels == 0).any() else float("nan")
            mark = " (deployed)" if name == self.threshold["score"] else ""
            rows.append([name + mark, f"{t:.6g}", sens, spec])
        rule = html.escape(self.threshold.get("rule", "abnormal when score > threshold"))
        spec = self.threshold.get("specificity")
        note = (
            f"<p>Thresholds chosen on {self.threshold.get('n_validation', '?')} validation normals at specificity "
            f"{spec} (never on the test set); {rule}. Sensitivity and specificity below are on the test set.</p>"
        )
        return section("Operating point", note + table(["score", "threshold", "sensitivity", "specificity"], rows))

    def _histogram_section(self) -> str:
        path = self.output_dir / "histograms.png"
        if not path.is_file():
            return ""
        return figure_section(
            "Score histograms", [("normal vs abnormal test scores, with the chi-squared distance", path.read_bytes())]
        )

    def _gallery_section(self) -> str:
        parts = [
            f"<p>Score: <b>{html.escape(self.gallery_score)}</b>; each tile is the preprocessed test image with "
            "the score's map overlaid, more opaque where higher (one scale for all tiles: the 1st to the "
            "99.5th percentile of their map values).</p>"
        ]
        picked = {name: [e[2] for e in sorted(self.heaps[name], reverse=True)] for name, _ in GALLERIES}
        tiles = [t[4] for items in picked.values() for t in items]
        if not tiles:
            return section(
                "Galleries", f"<p>The model gives no map for {html.escape(self.gallery_score)}: no gallery.</p>"
            )
        low, high = np.percentile(np.stack(tiles), [1, 99.5])
        for name, caption in GALLERIES:
            if picked[name]:
                files = ", ".join(f"{Path(t[0]).name} ({t[2]:.4g})" for t in picked[name])
                parts.append(
                    f"<h3>{html.escape(caption)}</h3>"
                    + image_tag(gallery_png(picked[name], low, high), caption)
                    + f"<p class='files' id='{name}'>{html.escape(files)}</p>"
                )
        return section("Galleries", "".join(parts))

    def _baseline_section(self, labels: np.ndarray) -> str:
        rows = []
        for name, values in self.baselines.items():
            if len(values) != len(labels):
                continue
            m = summarize_scores(np.asarray(values), labels, n_boot=self.n_boot, seed=self.seed)
            rows.append([name, m["auc"], fmt_interval(m["auc_ci95"]), max(m["auc"], 1 - m["auc"]), m["ap"]])
        note = (
            "<p>Trivial scores on the same preprocessed test images. AUC far from 0.5 in either direction "
            "(column 'either way') means the classes differ in a way no anomaly model is needed for: compare "
            "the scores above with these before trusting them.</p>"
        )
        return section(
            "Trivial baselines", note + table(["baseline", "AUC", "AUC 95% CI", "AUC either way", "AP"], rows)
        )


# ---------------------------------------------------------------------- figures


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def curve_figures(scores: dict, labels: np.ndarray) -> tuple[bytes, bytes]:
    """ROC and precision-recall curves of every score, one figure each, as PNG bytes."""
    roc_fig, roc_ax = plt.subplots(figsize=(5, 4.5))
    pr_fig, pr_ax = plt.subplots(figsize=(5, 4.5))
    both = 0 < labels.sum() < len(labels)
    for name, values in scores.items():
        if not both:
            break
        fpr, tpr, _ = roc_curve(labels, values)
        precision, recall, _ = precision_recall_curve(labels, values)
        roc_ax.plot(fpr, tpr, label=name)
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    pr_ax.axhline(labels.mean(), color="gray", lw=0.8, ls="--")
    for ax, (x, y) in ((roc_ax, ("false positive rate", "true positive rate")), (pr_ax, ("recall", "precision"))):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        if both:
            ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    roc_fig.tight_layout()
    pr_fig.tight_layout()
    return png_bytes(roc_fig), png_bytes(pr_fig)


def gallery_png(items: list, low: float, high: float) -> bytes:
    """A row of tiles: image in gray, map overlaid; the title gives label, score and file name.

    The map is scaled from ``low`` to ``high`` (shared by all tiles) and drawn more opaque where it
    is higher, so the image stays visible where the map is low.
    """
    fig, axes = plt.subplots(1, len(items), figsize=(2.1 * len(items), 2.5), squeeze=False)
    for ax, (name, label, score, image, amap) in zip(axes[0], items):
        level = np.clip((amap - low) / max(float(high - low), 1e-12), 0, 1)
        overlay = plt.get_cmap("inferno")(level)
        overlay[..., 3] = 0.75 * level
        ax.imshow(image, cmap="gray")
        ax.imshow(overlay)
        ax.set_title(f"{'abnormal' if label else 'normal'} {score:.4g}\n{Path(name).name[:24]}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


# ---------------------------------------------------------------------- HTML

STYLE = """body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}
th{background:#eee}td.n{text-align:right;font-family:monospace}img{max-width:100%;border:1px solid #ddd}
figure{display:inline-block;vertical-align:top;margin:8px}.warn{color:#a40000;font-weight:bold}pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}"""


def page(title: str, sections: list[str]) -> str:
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def image_tag(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def figure_section(title: str, figures: list[tuple[str, bytes]]) -> str:
    return section(
        title,
        "".join(
            f"<figure>{image_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, png in figures
        ),
    )


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def cell(value) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = fmt(value) if numeric else str(value)
    return f"<td class='n'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def fmt_interval(pair) -> str:
    return f"{pair[0]:.3f} - {pair[1]:.3f}" if isinstance(pair, (list, tuple)) and len(pair) == 2 else fmt(pair)


def is_score_entry(value) -> bool:
    return isinstance(value, dict) and "auc" in value


COLUMN_LABELS = {
    "auc": "AUC",
    "auc_ci95": "AUC 95% CI",
    "ap": "AP",
    "f1_max": "F1 max",
    "sens_at_spec95": "sensitivity at 95% specificity (test)",
    "chi2": "χ² histograms",
    "pixel_auroc": "pixel AUROC",
}


def _value_cell(key: str, value):
    if key.endswith("ci95") and isinstance(value, (list, tuple)):
        return fmt_interval(value)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else fmt(value)


def _score_table(entries: dict, columns: list[str]) -> str:
    rows = [
        [name] + [_value_cell(c, m[c]) if c in m else "" for c in columns]
        for name, m in entries.items()
        if any(c in m for c in columns)
    ]
    return table(["score"] + [COLUMN_LABELS.get(c, c) for c in columns], rows)


def metrics_section(metrics: dict) -> str:
    """Every score's entry: the summary columns, then the entries' further keys, whatever they are
    (values in one table; each key holding a dict in a table of its own, its keys as columns)."""
    entries = {name: m for name, m in metrics.items() if is_score_entry(m)}
    if not entries:
        return section("Metrics", "<p>metrics.json holds no score entries.</p>")
    keys = list(dict.fromkeys(k for m in entries.values() for k in m))
    nested = [k for k in keys if k not in KNOWN_COLUMNS and any(isinstance(m.get(k), dict) for m in entries.values())]
    extra = [k for k in keys if k not in KNOWN_COLUMNS and k not in nested]
    body = _score_table(entries, [c for c in KNOWN_COLUMNS if c in keys])
    if extra:
        body += "<h3>Further entries per score</h3>" + _score_table(entries, extra)
    for key in nested:
        sub = {name: m[key] for name, m in entries.items() if isinstance(m.get(key), dict)}
        columns = list(dict.fromkeys(c for d in sub.values() for c in d))
        body += f"<h3>{html.escape(key)}</h3>" + _score_table(sub, columns)
    return section("Metrics", body)


def diagnostics_section(metrics: dict) -> str:
    """Entries of metrics.json that are not per-score summaries, shown as they are."""
    other = {k: v for k, v in metrics.items() if not is_score_entry(v)}
    if not other:
        return ""
    return section(
        "Other entries of metrics.json", f"<pre>{html.escape(json.dumps(other, indent=1, default=str))}</pre>"
    )
