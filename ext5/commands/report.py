"""`ext5 report`: T0's zero-shot report from an evaluation's metrics, per dataset the median accuracy over
prompts and its interquartile range (CSV, markdown table, box plots). The report itself is
`ext5.eval.report`; this module is its command line.

  ext5 report gs://bucket/t0_3b/eval                 # the latest metrics_step<N>.json there
  ext5 report RESULTS [--out DIR] [--step N] [--metric accuracy]
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ext5 report", allow_abbrev=False,
                                description="T0 zero-shot report: median accuracy over prompts and IQR per "
                                            "dataset, as CSV, markdown and box plots.")
    p.add_argument("results", help="an eval output directory (its metrics_step<N>.json) or one metrics JSON file")
    p.add_argument("--out", default=None, help="output directory (default: RESULTS dir / t0_report)")
    p.add_argument("--step", type=int, default=None, help="which metrics_step<N>.json (default: the latest)")
    p.add_argument("--metric", default="accuracy", help="metric name in '<task>/<metric>' (default: accuracy)")
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of `ext5 report` (dispatched by ext5.cli); bad input raises a one-line UsageError."""
    from ext5.eval import report
    args = build_parser().parse_args(list(argv))
    scores, step = report.load_scores(args.results, args.step)
    base = args.results if os.path.isdir(args.results) else os.path.dirname(args.results)
    out = args.out or os.path.join(base or ".", "t0_report")
    title = "T0 zero-shot evaluation: median accuracy over prompts" + (f" (step {step})" if step is not None else "")
    paths = report.write_report(scores, out, metric=args.metric, title=title)
    with open(paths["markdown"], encoding="utf-8") as f:
        print(f.read())
    print(f"[ext5] wrote {paths['csv']}, {paths['markdown']}, {paths['plots']}/*.png, {paths['overview']}")
    return 0
