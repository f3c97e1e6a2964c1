"""Sum Prometheus expositions from several engine replicas into one.

Each replica exposes vLLM's metrics with identical label sets (``model_name``, ``engine``), so the
cluster-wide value of a counter or histogram bucket is the sum over replicas of the sample with the
same name and labels. Gauges are summed too (running/waiting requests add up) except ratios, whose
names end in ``_perc``/``_ratio`` and are averaged. Only the families named by ``prefix`` are kept,
so each replica's process-level metrics (memory, GC) don't masquerade as cluster totals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_AVERAGED_SUFFIXES = ("_perc", "_ratio")


@dataclass
class _Family:
    name: str
    kind: str
    doc: str
    # (sample name, sorted labels) -> [sum, count]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = field(default_factory=dict)


def _fmt_labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def merge_expositions(texts: Iterable[str], prefix: str = "vllm:") -> str:
    """One exposition whose samples are the sums (or means, for ratios) over ``texts``."""
    families: dict[str, _Family] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if not fam.name.startswith(prefix) or fam.name.endswith("_created"):
                continue
            merged = families.setdefault(fam.name, _Family(fam.name, fam.type, fam.documentation))
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue  # creation timestamps: per process, meaningless when summed
                key = (s.name, tuple(sorted(s.labels.items())))
                acc = merged.samples.setdefault(key, [0.0, 0])
                acc[0] += s.value
                acc[1] += 1
    lines: list[str] = []
    for fam in families.values():
        averaged = fam.kind == "gauge" and fam.name.endswith(_AVERAGED_SUFFIXES)
        lines.append(f"# HELP {fam.name} {fam.doc}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for (sample_name, labels), (total, count) in fam.samples.items():
            value = total / count if averaged else total
            lines.append(f"{sample_name}{_fmt_labels(labels)} {_fmt_value(value)}")
    return "\n".join(lines) + ("\n" if lines else "")
