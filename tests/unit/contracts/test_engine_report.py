"""The engine -> router/autoscaler contract: a missing field is an error, not a silent 0."""

from __future__ import annotations

from dataclasses import fields

import pytest

from contracts.engine_report import BlockGeometry, PromptHashing, ReplicaReport, ReportError, RoutingHint


def _report(**update: object) -> ReplicaReport:
    values = {f.name: 1.0 for f in fields(ReplicaReport) if f.name != "geometry"}
    values.update(ttft_p90_s=None, tpot_p90_s=0.02, acceptance_length=None, recent_acceptance_length=None)
    values.update(update)
    return ReplicaReport(geometry=BlockGeometry(32, 64, 128), **values)  # type: ignore[arg-type]


def test_round_trip_leaves_unmeasured_fields_off_the_wire():
    report = _report()
    wire = report.to_wire()
    assert (wire["block_size"], wire["group_block_size"], wire["cache_align_tokens"]) == (32, 64, 128)
    assert "ttft_p90_s" not in wire and wire["tpot_p90_s"] == 0.02
    assert ReplicaReport.from_wire(wire) == report


def test_window_means_across_a_geometry_change_still_read_as_a_report():
    # Serve's mean over a window in which the replica went from 32/32/32 to 32/64/128: no geometry at all.
    wire = _report().to_wire() | {"group_block_size": 58.0, "cache_align_tokens": 58.0}
    with pytest.raises(ValueError, match="inconsistent block geometry"):
        ReplicaReport.from_wire(wire)
    means = ReplicaReport.from_means(wire)
    assert (
        means.geometry == BlockGeometry.DEFAULT
        and means.tpot_p90_s == 0.02
        and means.num_waiting == _report().num_waiting
    )
    del wire["num_waiting"]
    with pytest.raises(ReportError, match="num_waiting"):  # the version-skew check still holds
        ReplicaReport.from_means(wire)


@pytest.mark.parametrize("key", ["num_waiting", "kv_cache_usage", "block_size", "finished_requests_per_s"])
def test_a_missing_required_key_is_named(key: str):
    wire = _report().to_wire()
    del wire[key]
    with pytest.raises(ReportError, match=key):
        ReplicaReport.from_wire(wire)


@pytest.mark.parametrize("geometry", [(0, 16, 16), (16, 24, 48), (16, 32, 48)])
def test_inconsistent_geometry_is_refused(geometry: tuple[int, int, int]):
    with pytest.raises(ValueError):
        BlockGeometry(*geometry)


def test_hint_of_accepts_a_by_value_copy_and_refuses_what_is_not_a_hint():
    class Copy:  # what a by-value pickled RoutingHint looks like: another class, the same fields
        token_ids = (1, 2)
        session_key = "s"

    assert RoutingHint.of(Copy()) == RoutingHint((1, 2), "s")

    class HashedCopy(Copy):  # and one the ingress hashed: its spec a by-value copy as well
        block_hashes = (7, 8)

        class hashed:  # stands for an instance: the fields are what RoutingHint.of reads
            geometry = BlockGeometry(16, 32, 64)
            max_blocks = 4
            seed = "seed"

    hashing = PromptHashing(BlockGeometry(16, 32, 64), 4, "seed")
    assert RoutingHint.of(HashedCopy()) == RoutingHint((1, 2), "s", (7, 8), hashing)
    assert RoutingHint.of(None) is None
    with pytest.raises(TypeError):
        RoutingHint.of(object())
