"""Teacher vs student with KD vs the same student without KD, on val: does distillation earn its place?

Both students share config, seed, views and batch order; only the loss differs. The teacher
row is the teacher bundle evaluated through :func:`sdk.qa.evaluation.evaluate`, the student rows
their exported bundles evaluated the same way. With a few hundred val photos a couple of
points is within noise, so the KD-vs-baseline difference comes with a paired test (exact
McNemar on the photos exactly one of the two gets right).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from converters.training.distill import DistillConfig, DistillResult, ModelStats, distill
from converters.training.distill_config import DEFAULT_CONFIG
from converters.training.loop import Log
from sdk.data import load_split
from sdk.qa.tables import markdown_table
from sdk.versions import host_info

COLUMNS = [
    "model",
    "input",
    "params",
    "MMACs",
    "val top-1",
    "val top-5",
    "agrees w/ teacher",
    "train minutes",
    "cached",
]
REPORT_JSON = "comparison.json"
REPORT_MD = "comparison.md"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Comparison:
    """The teacher and the students on the same val photos."""

    teacher: ModelStats
    kd: DistillResult
    baseline: DistillResult | None
    paired: dict[str, Any] | None
    val_images: int

    def rows(self) -> list[dict[str, Any]]:
        t = self.teacher
        rows = [_row(f"teacher {t.variant or t.name}", t, None, None)]
        rows.append(_row(f"{self.kd.config.variant} + KD", self.kd.student, self.kd.teacher_agreement, self.kd.cached))
        if self.baseline is not None:
            b = self.baseline
            rows.append(_row(f"{b.config.variant} no KD", b.student, b.teacher_agreement, b.cached))
        return rows

    def verdict(self) -> str:
        if self.paired is None:
            return "no baseline was run (--no-kd-baseline): nothing shows what KD adds"
        p = self.paired
        sign = "+" if p["delta_top1_pt"] >= 0 else ""
        sign5 = "+" if p["delta_top5_pt"] >= 0 else ""
        text = (
            f"KD vs no KD: {sign}{p['delta_top1_pt']:.1f} pt val top-1 ({p['kd_only_correct']} photos right only "
            f"with KD, {p['baseline_only_correct']} only without; exact McNemar p = {p['mcnemar_p']:.3f}, "
            f"{self.val_images} photos)"
        )
        if p["delta_top1_pt"] > 0 and p["mcnemar_p"] < 0.05:
            text += ": KD earns its place in top-1."
        elif p["delta_top1_pt"] > 0:
            text += ": KD is ahead in top-1, but not significantly on this val set."
        else:
            text += ": KD does not beat the baseline in top-1 here."
        return (
            text + f" Top-5: {sign5}{p['delta_top5_pt']:.1f} pt (McNemar p = {p['top5_mcnemar_p']:.3f}); "
            f"val NLL {p['nll_kd']:.3f} with KD vs {p['nll_baseline']:.3f} without."
        )

    def to_dict(self) -> dict[str, Any]:
        def result(r: DistillResult | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {
                **dataclasses.asdict(r.student),
                "teacher_agreement": r.teacher_agreement,
                "cached": r.cached,
                "bundle": str(r.bundle_path),
                "report": str(r.report_path),
                "config": r.config.to_dict(),
            }

        return {
            "teacher": dataclasses.asdict(self.teacher),
            "kd": result(self.kd),
            "baseline": result(self.baseline),
            "kd_vs_baseline": self.paired,
            "verdict": self.verdict(),
            "val_images": self.val_images,
            "rows": self.rows(),
            "host": host_info(),
        }

    def to_markdown(self) -> str:
        return (
            f"# Distillation: teacher vs student\n\nVal top-1/top-5 of each Keras bundle through sdk.qa.evaluation "
            f"on {self.val_images} val photos; MACs counted from the Conv/Dense layers at each input size; "
            f"agreement = same top-1 as the teacher. Host: {host_info().get('cpu')}.\n\n"
            f"{markdown_table(self.rows(), COLUMNS)}\n\n{self.verdict()}\n"
        )


def _row(model: str, s: ModelStats, agreement: float | None, cached: bool | None) -> dict[str, Any]:
    return {
        "model": model,
        "input": s.input_size,
        "params": f"{s.params:,}",
        "MMACs": round(s.macs / 1e6),
        "val top-1": s.val_top1,
        "val top-5": s.val_top5,
        "agrees w/ teacher": agreement,
        "train minutes": None if s.train_seconds is None else f"{s.train_seconds / 60:.1f}",
        "cached": cached,
    }


def mcnemar_exact(kd_only: int, baseline_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts."""
    n = kd_only + baseline_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(kd_only, baseline_only) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_stats(kd_logits: np.ndarray, base_logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """KD vs baseline on the same photos: top-1 and top-5 differences with exact McNemar tests, and val NLL."""
    stats: dict[str, Any] = {}
    for k, prefix in ((1, ""), (5, "top5_")):
        kd_right, base_right = _in_top_k(kd_logits, labels, k), _in_top_k(base_logits, labels, k)
        kd_only, base_only = int((kd_right & ~base_right).sum()), int((base_right & ~kd_right).sum())
        stats |= {
            f"delta_top{k}_pt": round(float(100.0 * (kd_right.mean() - base_right.mean())), 2),
            f"{prefix}kd_only_correct": kd_only,
            f"{prefix}baseline_only_correct": base_only,
            f"{prefix}mcnemar_p": round(mcnemar_exact(kd_only, base_only), 4),
        }
    # Negative log-likelihood: soft targets are expected to show in calibration before top-1.
    stats |= {"nll_kd": round(_nll(kd_logits, labels), 4), "nll_baseline": round(_nll(base_logits, labels), 4)}
    return stats


def _in_top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-logits, axis=1, kind="stable")[:, : min(k, logits.shape[1])]
    return (top == labels[:, None]).any(axis=1)


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def compare(
    teacher_bundle: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    config: DistillConfig = DEFAULT_CONFIG,
    *,
    baseline: bool = True,
    log: Log = print,
    force: bool = False,
) -> Comparison:
    """Distil the student with KD and (unless ``baseline=False``) without; write ``comparison.json`` / ``.md``.

    Raises:
        ConfigError, BundleError, ManifestError, BackendUnavailableError, ConversionError: see
            :func:`converters.training.distill.distill`.
    """
    out = Path(out_dir)
    kd = distill(teacher_bundle, data_root, out, dataclasses.replace(config, kd=True), log, force=force)
    base = None
    if baseline:
        base = distill(teacher_bundle, data_root, out, dataclasses.replace(config, kd=False), log, force=force)
    labels = np.asarray(load_split(data_root, "val").labels)
    paired = None if base is None else paired_stats(kd.val_logits(), base.val_logits(), labels)
    comparison = Comparison(teacher=kd.teacher, kd=kd, baseline=base, paired=paired, val_images=len(labels))
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(comparison.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(comparison.to_markdown(), encoding="utf-8")
    log(f"[distill] wrote {out / REPORT_JSON} and {out / REPORT_MD}")
    return comparison
