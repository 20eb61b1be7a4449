"""The speed goals of issue 9 (the "targets" of the summary), judged from a matrix result
(:mod:`.matrix`).

Each goal is data: a ratio of two records' img/s (numerator over denominator, each
named by a :class:`~.matrix.Key`) against a threshold, or the fused B2 backbone's share of
the dense fp16 matmul peak. A goal whose records are missing is 'not measured', never
met. Goals about the fp16 B2 are also judged with the fastest call path of the
``options`` group (the same path for R-101-D8 where both sides are fp16), reported beside
the main verdict, which is always mmseg's predict path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

from ..fast_inference import OPTION_VARIANTS
from .matrix import BACKBONE, PREDICT, Key


@dataclass(frozen=True)
class RatioGoal:
    """``fps(numerator) / fps(denominator) >= threshold`` (``>`` if ``strict``)."""

    name: str
    text: str
    numerator: Key
    denominator: Key
    threshold: float
    strict: bool = False


@dataclass(frozen=True)
class PeakGoal:
    """Achieved TFLOP/s of the ``backbone`` record over the dense matmul peak."""

    name: str
    text: str
    backbone: Key
    threshold: float


def _fused_vs_train_time(role: str, label: str) -> RatioGoal:
    return RatioGoal(f'fused_vs_train_time_{role}',
                       f'fused PSPNet-{label} >= 1.4x its train-time model (fp32, TF32)',
                       Key('fp32', role, PREDICT, True), Key('fp32', role, PREDICT, False), 1.4)


GOALS = (
    RatioGoal('b2_fp16_vs_r101_fp32',
                'fused PSPNet-B2 fp16 channels-last >= 3.0x PSPNet R-101-D8 fp32 (TF32)',
                Key('fp16cl', 'b2', PREDICT, True), Key('fp32', 'r101'), 3.0),
    RatioGoal('b2_vs_r101_fp16',
                'fused PSPNet-B2 >= 1.3x R-101-D8, both fp16 channels-last (same tricks)',
                Key('fp16cl', 'b2', PREDICT, True), Key('fp16cl', 'r101'), 1.3),
    _fused_vs_train_time('b2', 'B2'),
    _fused_vs_train_time('b2_fast', 'B2-fast'),
    _fused_vs_train_time('b1g2', 'B1g2'),
    _fused_vs_train_time('b1g2_fast', 'B1g2-fast'),
    PeakGoal('b2_backbone_peak',
               'fused B2 backbone (fp16 channels-last) >= 60% of the dense fp16 matmul peak',
               Key('backbone', 'b2', BACKBONE, True), 0.60),
    RatioGoal('paper_b1g2_fast_vs_r50',
                'paper protocol: fused B1g2-fast faster than R-50-D8',
                Key('paper', 'b1g2_fast', PREDICT, True), Key('paper', 'r50'), 1.0, strict=True),
    RatioGoal('paper_b2_fast_vs_r101',
                'paper protocol: fused B2-fast at least as fast as R-101-D8',
                Key('paper', 'b2_fast', PREDICT, True), Key('paper', 'r101'), 1.0),
)


@dataclass
class Verdict:
    """One goal's outcome; ``met`` is None when its records are missing."""

    name: str
    text: str
    threshold: float
    value: Optional[float]
    met: Optional[bool]
    detail: str
    profile: list = field(default_factory=list)  # Key dicts of the records concerned
    option_value: Optional[float] = None
    option_variant: Optional[str] = None
    option_met: Optional[bool] = None

    def to_dict(self) -> dict:
        return asdict(self)


def find_record(records: Iterable[dict], key: Key) -> Optional[dict]:
    for record in records:
        if (record.get('group'), record.get('role'), record.get('variant'),
                record.get('fused')) == (key.group, key.role, key.variant, key.fused):
            return record
    return None


def _passes(value: float, threshold: float, strict: bool) -> bool:
    return value > threshold if strict else value >= threshold


def _describe(record: dict) -> str:
    return f"{record['name']} {record['fps']:.2f} img/s"


def _best_option(records: Sequence[dict], goal: RatioGoal) -> Optional[tuple]:
    """The fastest option path for the fp16 numerator: ``(ratio, variant)`` or None.

    When the denominator is fp16 channels-last too, it is timed through the same path.
    """
    if goal.numerator.group != 'fp16cl':
        return None
    best = None
    for variant in OPTION_VARIANTS:
        numerator = find_record(records, Key('options', goal.numerator.role, variant,
                                             goal.numerator.fused))
        if goal.denominator.group == 'fp16cl':
            denominator = find_record(records, Key('options', goal.denominator.role,
                                                   variant, goal.denominator.fused))
        else:
            denominator = find_record(records, goal.denominator)
        if numerator and denominator:
            ratio = numerator['fps'] / denominator['fps']
            if best is None or ratio > best[0]:
                best = (ratio, variant)
    return best


def _ratio_verdict(records: Sequence[dict], goal: RatioGoal) -> Verdict:
    numerator = find_record(records, goal.numerator)
    denominator = find_record(records, goal.denominator)
    profile = [asdict(goal.numerator), asdict(goal.denominator)]
    if numerator is None or denominator is None:
        missing = [str(asdict(k)) for k, r in ((goal.numerator, numerator),
                                               (goal.denominator, denominator)) if r is None]
        return Verdict(goal.name, goal.text, goal.threshold, None, None,
                       'not measured: no record for ' + ', '.join(missing), profile)
    ratio = numerator['fps'] / denominator['fps']
    verdict = Verdict(goal.name, goal.text, goal.threshold, ratio,
                      _passes(ratio, goal.threshold, goal.strict),
                      f'{_describe(numerator)} / {_describe(denominator)} = {ratio:.2f}x',
                      profile)
    best = _best_option(records, goal)
    if best is not None:
        verdict.option_value, verdict.option_variant = best
        verdict.option_met = _passes(best[0], goal.threshold, goal.strict)
    return verdict


def _peak_verdict(records: Sequence[dict], matmul: Optional[dict],
                  goal: PeakGoal) -> Verdict:
    backbone = find_record(records, goal.backbone)
    profile = [asdict(goal.backbone)]
    if backbone is None or not backbone.get('tflops') or not matmul:
        return Verdict(goal.name, goal.text, goal.threshold, None, None,
                       'not measured: no backbone record or matmul peak', profile)
    share = backbone['tflops'] / matmul['tflops']
    return Verdict(goal.name, goal.text, goal.threshold, share,
                   share >= goal.threshold,
                   f"{backbone['tflops']:.1f} TFLOP/s ({backbone['gflops']:.0f} GFLOPs as "
                   f"multiply-adds x2 x {backbone['fps']:.1f} img/s) of "
                   f"{matmul['tflops']:.1f} TFLOP/s (fp16 matmul {matmul['n']}^3) = "
                   f'{100 * share:.1f}%', profile)


def evaluate(matrix: dict) -> list[Verdict]:
    """Every goal of :data:`GOALS` on a matrix result (``load_matrix``)."""
    records = matrix.get('records') or []
    verdicts = []
    for goal in GOALS:
        if isinstance(goal, PeakGoal):
            verdicts.append(_peak_verdict(records, matrix.get('matmul'), goal))
        else:
            verdicts.append(_ratio_verdict(records, goal))
    return verdicts


def keys_to_profile(verdicts: Iterable[Verdict], every_target: bool = False) -> list[Key]:
    """The records of the targets that were missed (or of every goal), each once."""
    keys = []
    for verdict in verdicts:
        if every_target or verdict.met is False:
            keys += [Key(**k) for k in verdict.profile if Key(**k) not in keys]
    return keys
