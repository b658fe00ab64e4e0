"""The benchmark's real phantom images: the judge's set, held-out images, and the N examples of each new finding.

- `judge`: every finding, trains the judge (which must know the held-out findings the base never saw);
- `heldout`: every finding, other virtual patients: the FID reference and the judge's own accuracy on real images;
- `rehearsal`: the base findings only (other patients), the images a rehearsal setting adds to the N examples;
- `pool_<finding>`: rendered with that finding only (about 70 % of its images carry it, the rest are normal), so
  the adaptation examples show the new finding alone. The N examples are its first N images with the finding
  (N = 5 is inside N = 25, inside N = 100), in `examples_<finding>_nNNN.csv` beside the images, each with a
  report rewritten to name only the base findings and the new one (as a report of the adapted domain would).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from medsd.benchmark.methods import TrainingSubset
from medsd.benchmark.plan import AdaptationPlan
from medsd.errors import MedsdError
from medsd.phantom.render import FINDINGS, REGIONS, finding_slug, mask_column
from medsd.phantom.text_model import render_training_set

log = logging.getLogger(__name__)

SEED_OFFSETS = {"judge": 1, "heldout": 2, "rehearsal": 3}  # pools: 10 + the finding's index: own patients each


def render_sets(root: Path, plan: AdaptationPlan, seed: int, judge_set: bool = True,
                rehearsal: int = 0) -> dict[str, Path]:
    """Render (or reuse) the judge set (unless a trained judge is given), the held-out set, one pool per
    held-out finding and, when `rehearsal` > 0, that many base-finding images under `root`."""
    every = list(FINDINGS)
    sets = {"heldout": render_training_set(root / "phantom_heldout", plan.n_heldout, plan.size,
                                           seed + SEED_OFFSETS["heldout"], every)}
    if judge_set:
        sets["judge"] = render_training_set(root / "phantom_judge", plan.n_judge, plan.size,
                                            seed + SEED_OFFSETS["judge"], every)
    if rehearsal:
        sets["rehearsal"] = render_training_set(root / "phantom_rehearsal", rehearsal, plan.size,
                                                seed + SEED_OFFSETS["rehearsal"], plan.base_findings)
    for finding in plan.adapted:
        sets[pool_name(finding)] = render_training_set(root / f"phantom_{pool_name(finding)}", plan.n_pool, plan.size,
                                                       seed + 10 + FINDINGS.index(finding), [finding])
    return sets


def pool_name(finding: str) -> str:
    return f"pool_{finding_slug(finding)}"


def training_subset(pool: Path, finding: str, n: int, base_findings: list[str]) -> TrainingSubset:
    """Write (or reuse) the CSV of the first `n` pool images that carry `finding`, reports naming only the base
    findings and `finding`."""
    csv = pool / f"examples_{finding_slug(finding)}_n{n:03d}.csv"
    subset = TrainingSubset(finding, n, pool, csv, tuple(base_findings))
    if csv.is_file():
        return subset
    frame = _read_rendered(pool, ["Path", finding])
    chosen = frame[frame[finding] == 1].head(n).copy()
    if len(chosen) < n:
        raise MedsdError(f"{pool} holds only {len(chosen)} images with {finding}, fewer than N={n}; raise the "
                         f"plan's n_pool (now {len(frame)})")
    chosen["Report"] = _reports(pool, chosen["Path"], [*base_findings, finding])
    _write_csv(chosen, csv)
    log.info("wrote %d examples of %s to %s", n, finding, csv)
    return subset


def example_repeats(n: int, k: int, share: float | None) -> int:
    """How often each of `n` examples is listed beside `k` rehearsal images so that they make about `share` of
    the rows (at least once; None: once)."""
    if share is None:
        return 1
    return max(1, round(share * k / ((1 - share) * n)))


def with_rehearsal(subset: TrainingSubset, rehearsal_set: Path, k: int, share: float | None = None) -> TrainingSubset:
    """`subset` whose training CSV adds the first `k` images of the rehearsal set (base findings only, reports
    naming the base findings and the new one, as the examples' do); the examples CSV is unchanged. `share`:
    repeat the examples so they make about that share of the rows (a batch then draws them that often however
    few they are), as DreamBooth pairs each instance image with a class image."""
    if k <= 0:
        return subset
    repeats = example_repeats(subset.n, k, share)
    suffix = f"_x{repeats}" if repeats > 1 else ""
    csv = subset.csv.with_name(f"{subset.csv.stem}_rehearsal{k:03d}{suffix}.csv")
    rehearsed = replace(subset, training_csv=csv, rehearsal=k, example_repeats=repeats)
    if csv.is_file():
        return rehearsed
    frame = _read_rendered(rehearsal_set, ["Path"])
    if len(frame) < k:
        raise MedsdError(f"{rehearsal_set} holds {len(frame)} images, fewer than the {k} a rehearsal setting adds; "
                         "delete the folder so that the benchmark renders it again")
    extra = frame.head(k).copy()
    extra["Report"] = _reports(rehearsal_set, extra["Path"], [*subset.base_findings, subset.finding])
    # Paths (images and their masks) stay relative to the pool (the run's data.root), so the set is read where it
    # lies.
    relative = Path("..") / rehearsal_set.name
    for column in ["Path", *(mask_column(f) for f in [*FINDINGS, *REGIONS] if mask_column(f) in extra)]:
        extra[column] = [str(relative / p) if isinstance(p, str) and p else p for p in extra[column]]
    examples = pd.read_csv(subset.csv)
    _write_csv(pd.concat([examples] * repeats + [extra], ignore_index=True).fillna({subset.finding: 0}), csv)
    return rehearsed


def _read_rendered(folder: Path, columns: list[str]) -> pd.DataFrame:
    """The `train.csv` of a set the benchmark rendered; one that cannot be read is one clear error."""
    path = folder / "train.csv"
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:  # EmptyDataError is a ValueError
        raise MedsdError(f"{path} cannot be read ({type(err).__name__}); delete {folder} so that the benchmark "
                         "renders it again") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MedsdError(f"{path} lacks the column(s) {missing}; delete {folder} so that the benchmark renders it "
                         "again")
    return frame


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write whole or not at all: a CSV that exists is reused, so a killed benchmark must not leave half of one."""
    partial = path.with_name(path.name + ".partial")
    frame.to_csv(partial, index=False)
    os.replace(partial, path)


def _reports(folder: Path, paths: pd.Series, named: list[str]) -> list[str]:
    """Reports of the images at `paths` (relative to `folder`) that name only the findings in `named`."""
    from medsd.phantom.reports import report_for_record

    source = folder / "params.jsonl"
    try:
        records = {rec["path"]: rec for rec in map(json.loads, filter(str.strip, source.read_text().splitlines()))}
        chosen = [records[path] for path in paths]
    except (OSError, ValueError, KeyError) as err:  # json.JSONDecodeError is a ValueError
        raise MedsdError(f"{source} does not describe the images of {folder / 'train.csv'} ({type(err).__name__}: "
                         f"{err}); delete {folder} so that the benchmark renders it again") from err
    return [report_for_record(record, findings=named).text for record in chosen]
