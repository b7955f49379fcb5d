"""Trace parsing: the Azure CSV, the generic CSV/JSONL, selection and rate scaling."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kvpilot.sim.trace import Request, TraceError, load_trace, write_trace

ROOT = Path(__file__).resolve().parents[2]

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,0
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_azure_csv_relative_to_first_request(tmp_path: Path) -> None:
    reqs = load_trace(_write(tmp_path, "a.csv", AZURE))
    assert [r.prompt_tokens for r in reqs] == [374, 396, 879]
    assert [r.output_tokens for r in reqs] == [44, 109, 1]  # at least one token back
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(4.314579)
    assert reqs[2].arrival_s == pytest.approx(4.541877)


def test_rate_scale_compresses_time(tmp_path: Path) -> None:
    reqs = load_trace(_write(tmp_path, "a.csv", AZURE), rate_scale=2.0)
    assert reqs[1].arrival_s == pytest.approx(4.314579 / 2)


def test_selection_window_counts_from_its_start(tmp_path: Path) -> None:
    reqs = load_trace(_write(tmp_path, "a.csv", AZURE), start_s=4.4, duration_s=1.0)
    assert reqs == [Request(pytest.approx(4.541877 - 4.4), 879, 1)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("g.csv", "timestamp,input_tokens,output_tokens\n10.5,100,20\n10.0,50,5\n"),
        ("g2.csv", "arrival_s,prompt_tokens,completion_tokens\n10.5,100,20\n10.0,50,5\n"),
        (
            "g.jsonl",
            '{"timestamp": 10.5, "input_tokens": 100, "output_tokens": 20}\n'
            '{"timestamp": 10.0, "input_tokens": 50, "output_tokens": 5}\n',
        ),
    ],
)
def test_generic_formats_sorted_by_arrival(tmp_path: Path, name: str, text: str) -> None:
    assert load_trace(_write(tmp_path, name, text)) == [Request(0.0, 50, 5), Request(0.5, 100, 20)]


def test_write_trace_round_trips(tmp_path: Path) -> None:
    reqs = [Request(0.0, 10, 2), Request(1.25, 300, 40)]
    write_trace(tmp_path / "t.csv", reqs)
    assert load_trace(tmp_path / "t.csv") == reqs


@pytest.mark.parametrize(
    "text",
    ["a,b,c\n1,2,3\n", "timestamp,input_tokens,output_tokens\nx,2,3\n", "{not json\n"],
)
def test_unreadable_traces_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(TraceError):
        load_trace(_write(tmp_path, "bad.csv", text))


def test_shipped_conversation_trace() -> None:
    reqs = load_trace(ROOT / "bench" / "traces" / "azure-llm-2023-conv.csv")
    assert len(reqs) == 19366
    assert reqs[-1].arrival_s < 3600
    assert all(b.arrival_s >= a.arrival_s for a, b in itertools.pairwise(reqs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_scale": 0.0}, "rate_scale must be positive"),
        ({"start_s": -5.0}, "start must be at least 0 s"),
        ({"duration_s": 0.0}, "duration must be positive"),
    ],
)
def test_selections_that_select_nothing_sensible_are_refused(
    tmp_path: Path, kwargs: dict[str, float], message: str
) -> None:
    path = tmp_path / "t.csv"
    write_trace(path, [Request(0.0, 10, 2), Request(1.0, 10, 2)])
    with pytest.raises(TraceError, match=message):
        load_trace(path, **kwargs)
