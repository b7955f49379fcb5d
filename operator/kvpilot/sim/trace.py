"""Request traces for the fleet simulator: arrival time, prompt tokens, output tokens.

Two formats are read:

* The Azure LLM inference trace (AzurePublicDataset, ``AzureLLMInferenceTrace_*.csv``;
  CC-BY 4.0, see ``bench/traces/README.md``): a CSV with the header
  ``TIMESTAMP,ContextTokens,GeneratedTokens`` where ``TIMESTAMP`` is a wall-clock
  date-time (``2023-11-16 18:15:46.6805900``).
* A generic trace, CSV or JSON Lines, with one request per row/line and three
  fields: ``timestamp`` (arrival, seconds on any origin), ``input_tokens`` and
  ``output_tokens``. The aliases ``arrival_s``/``time``, ``prompt_tokens`` and
  ``completion_tokens``/``generated_tokens`` are accepted too. Example::

      timestamp,input_tokens,output_tokens
      0.0,512,128
      0.35,1024,64

  or ``{"timestamp": 0.0, "input_tokens": 512, "output_tokens": 128}`` per line.

Arrival times are returned relative to the first request of the selection, sorted.
``rate_scale`` compresses time: 2.0 replays the trace at twice its request rate
(half its duration), 0.5 at half the rate.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_TIME_KEYS = ("timestamp", "arrival_s", "time")
_INPUT_KEYS = ("input_tokens", "prompt_tokens")
_OUTPUT_KEYS = ("output_tokens", "completion_tokens", "generated_tokens")


@dataclass(frozen=True)
class Request:
    """One request of a trace: when it arrives (s) and its prompt and output lengths."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and the line."""


def _azure_time(text: str) -> float:
    """Seconds since the epoch of an Azure trace timestamp (7 fractional digits)."""
    date, _, frac = text.strip().partition(".")
    base = datetime.fromisoformat(date).timestamp()
    return base + (float(f"0.{frac}") if frac else 0.0)


def _pick(row: Mapping[str, object], keys: Iterable[str], what: str) -> object:
    for key in keys:
        if key in row and row[key] not in (None, ""):
            return row[key]
    raise KeyError(what)


def _generic(row: Mapping[str, object]) -> tuple[float, int, int]:
    t = float(_pick(row, _TIME_KEYS, "timestamp"))  # type: ignore[arg-type]
    n_in = int(float(_pick(row, _INPUT_KEYS, "input_tokens")))  # type: ignore[arg-type]
    n_out = int(float(_pick(row, _OUTPUT_KEYS, "output_tokens")))  # type: ignore[arg-type]
    return t, n_in, n_out


def _rows(path: Path) -> Iterator[tuple[int, tuple[float, int, int]]]:
    """(line number, (time, input, output)) for every request in the file."""
    with path.open(newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        if first.lstrip().startswith("{"):
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield lineno, _generic(json.loads(line))
            return
        reader = csv.DictReader(fh)
        fields = {f.strip() for f in reader.fieldnames or ()}
        azure = set(AZURE_COLUMNS) <= fields
        for lineno, raw_row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in raw_row.items() if k is not None}
            if azure:
                yield (
                    lineno,
                    (
                        _azure_time(row["TIMESTAMP"]),
                        int(row["ContextTokens"]),
                        int(row["GeneratedTokens"]),
                    ),
                )
            else:
                yield lineno, _generic(row)


def load_trace(
    path: str | Path,
    rate_scale: float = 1.0,
    start_s: float | None = None,
    duration_s: float | None = None,
) -> list[Request]:
    """The requests of a trace file, sorted by arrival, relative to the selection's start.

    ``start_s`` and ``duration_s`` select ``[start_s, start_s + duration_s)`` in the
    trace's own seconds from its first request, before ``rate_scale`` compresses time;
    arrivals count from ``start_s`` when it is given, else from the first request.
    Requests without output tokens or prompt are kept with at least one token each
    (a real client gets at least one token back). Raises TraceError.
    """
    if rate_scale <= 0:
        raise TraceError(f"rate_scale must be positive, got {rate_scale}")
    if start_s is not None and start_s < 0:
        raise TraceError(f"start must be at least 0 s into the trace, got {start_s}")
    if duration_s is not None and duration_s <= 0:
        raise TraceError(f"duration must be positive, got {duration_s}")
    p = Path(path)
    raw: list[tuple[float, int, int]] = []
    try:
        for lineno, (t, n_in, n_out) in _rows(p):
            if n_in < 0 or n_out < 0 or math.isnan(t):
                raise TraceError(f"{p}:{lineno}: negative token count or NaN time")
            raw.append((t, max(1, n_in), max(1, n_out)))
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, TraceError):
            raise
        raise TraceError(
            f"{p}: not an Azure trace ({','.join(AZURE_COLUMNS)}) nor a generic one "
            f"(timestamp, input_tokens, output_tokens): {exc!r}"
        ) from None
    except OSError as exc:
        raise TraceError(f"{p}: {exc.strerror or exc}") from None
    if not raw:
        return []
    raw.sort(key=lambda r: r[0])
    origin = raw[0][0]
    lo = origin + (start_s or 0.0)
    hi = lo + duration_s if duration_s is not None else float("inf")
    chosen = [r for r in raw if lo <= r[0] < hi]
    if not chosen:
        return []
    first = chosen[0][0] if start_s is None else lo
    return [Request((t - first) / rate_scale, n_in, n_out) for t, n_in, n_out in chosen]


def write_trace(path: str | Path, requests: Iterable[Request]) -> None:
    """Writes requests as a generic CSV trace (timestamp, input_tokens, output_tokens)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "input_tokens", "output_tokens"])
        for r in requests:
            w.writerow([f"{r.arrival_s:.6f}", r.prompt_tokens, r.output_tokens])
