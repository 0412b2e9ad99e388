"""Request-trace loaders: a trace file -> :class:`~afd_jax.workload.containers.TraceWorkload`.

Formats (see docs/traces.md):

=========== ========= ====================================== ===============================
format      container prompt field (P)                       output field (-> D)
=========== ========= ====================================== ===============================
``azure``    CSV      ``ContextTokens``                      ``GeneratedTokens``
``mooncake`` JSONL    ``input_length``                       ``output_length``
``vidur``    CSV      ``num_prefill_tokens``                 ``num_decode_tokens``
``burstgpt`` CSV      ``Request tokens``                     ``Response tokens``
``csv``      CSV      ``prompt_field`` (required)            ``decode_field`` (required)
``jsonl``    JSONL    ``prompt_field`` (required)            ``decode_field`` (required)
=========== ========= ====================================== ===============================

The format is detected from the CSV header / the first JSON object; ``fmt`` overrides it, and
``prompt_field``/``decode_field`` override the column names of any format. A ``.gz`` file (or any
file starting with the gzip magic bytes) is decompressed on the fly.

Decode mapping (docs/model.md 4): ``"output"`` (default) D = output tokens; ``"output-minus-one"``
D = max(output tokens - 1, 0) (engines whose prefill emits the first token; a request with no
output token holds no decode slot either). Rows with D = 0 are kept with zero weight.

Every problem raises :class:`~afd_jax.errors.InputError` naming the file, the 1-based physical
line and the field. Rows are checked against the header: a CSV row with more non-blank fields
than the header (``1,5,200,20`` under three columns, which would otherwise be read shifted) and
a column name given twice in the header (or a key given twice in a JSON object) are errors.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np

from afd_jax.errors import InputError, shown
from afd_jax.memory import current_budget, format_bytes, require
from afd_jax.workload.containers import TraceWorkload
from afd_jax.workload.numbers import TOKEN_LIMIT, check_plain, integral, parse_float, plain

#: Known formats: name -> (container, prompt field, output field).
FORMATS: dict[str, tuple[str, str | None, str | None]] = {
    "azure": ("csv", "ContextTokens", "GeneratedTokens"),
    "mooncake": ("jsonl", "input_length", "output_length"),
    "vidur": ("csv", "num_prefill_tokens", "num_decode_tokens"),
    "burstgpt": ("csv", "Request tokens", "Response tokens"),
    "csv": ("csv", None, None),
    "jsonl": ("jsonl", None, None),
}
DECODE_MAPPINGS = ("output", "output-minus-one")
_GZIP_MAGIC = b"\x1f\x8b"
_LINE_END = re.compile(r"\r\n|\r|\n")
PARSE_BYTES_PER_BYTE = 32
"""Peak host memory of parsing a trace, in bytes per byte of its text (the bytes, the text,
the cells and the arrays): measured 9.8 on the Azure conversation trace (37 bytes a row), 2.6
on the Mooncake one and 25 on two million rows of 4 bytes (``5,6``)."""


def load_trace(
    path: str | os.PathLike,
    fmt: str | None = None,
    prompt_field: str | None = None,
    decode_field: str | None = None,
    decode_mapping: str = "output",
) -> TraceWorkload:
    """Read a request trace into a :class:`TraceWorkload`.

    Args:
      path: CSV or JSONL file, optionally gzip-compressed.
      fmt: one of :data:`FORMATS` (default: detected from the header / first JSON object).
      prompt_field, decode_field: column names of P and of the output token count (required for
        the generic ``"csv"``/``"jsonl"`` formats; override the defaults of the others).
      decode_mapping: ``"output"`` (D = output) or ``"output-minus-one"`` (D = max(output-1, 0)).

    Returns:
      TraceWorkload with int64 arrays ``prompt`` (n,), ``decode`` (n,) (mapped decode steps, may be
      0), ``source`` = the path, ``format`` = the (detected) format.

    Raises:
      InputError: missing file, unknown format, missing column, a value that is not a finite
        non-negative integer (``3.0`` is accepted, ``3.5`` is not), an empty trace, or a trace in
        which every decode length is 0.
    """
    spath = str(path)
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", path=spath)
    if not p.is_file():
        raise InputError("not a regular file", path=spath)
    if decode_mapping not in DECODE_MAPPINGS:
        raise InputError(
            f"unknown decode mapping {decode_mapping!r} (known: {', '.join(DECODE_MAPPINGS)})",
            field="decode_mapping",
        )
    if fmt is not None and fmt not in FORMATS:
        raise InputError(
            f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})",
            path=spath,
            field="format",
        )
    if (prompt_field is None) != (decode_field is None):
        raise InputError(
            "give both prompt_field and decode_field (or neither)",
            path=spath,
            field="prompt_field" if prompt_field is None else "decode_field",
        )

    text = read_text(p, spath)
    container = FORMATS[fmt][0] if fmt is not None else _detect_container(text)
    if container == "jsonl":
        fmt, pf, df, prompt, output, lines = _parse_jsonl(
            text, spath, fmt, prompt_field, decode_field
        )
    else:
        fmt, pf, df, prompt, output, lines = _parse_csv(
            text, spath, fmt, prompt_field, decode_field
        )

    if prompt.shape[0] == 0:
        raise InputError("empty trace: no request rows", path=spath, line=lines, field=df)
    decode = np.maximum(output - 1, 0) if decode_mapping == "output-minus-one" else output
    if not np.any(decode > 0):
        raise InputError(
            f"every decode length is 0 (decode mapping {decode_mapping!r}): "
            "no request holds a slot",
            path=spath,
            line=lines,
            field=df,
        )
    return TraceWorkload(
        name=_trace_name(p),
        prompt=prompt,
        decode=decode.astype(np.int64),
        source=spath,
        format=fmt,
        decode_mapping=decode_mapping,
    )


# --------------------------------------------------------------------------- reading


def _trace_name(p: Path) -> str:
    name = p.name
    for suffix in (".gz", ".csv", ".jsonl", ".json", ".tsv", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or p.name


def read_text(p: Path, spath: str) -> str:
    """The file's text (gunzipped when it starts with the gzip magic bytes), refused before
    reading when parsing it would exceed the memory budget (:data:`PARSE_BYTES_PER_BYTE`). A
    pipe is read too (its size is known only once read)."""
    try:
        with p.open("rb") as handle:
            magic = handle.peek(2)[:2]
            if magic == _GZIP_MAGIC:
                raw = _gunzip(handle, spath)
            else:
                _require_text(p.stat().st_size, spath)
                raw = handle.read()
                _require_text(len(raw), spath)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=spath) from None
    if magic != _GZIP_MAGIC and spath.endswith(".gz"):
        raise InputError("file ends in .gz but is not gzip-compressed", path=spath)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError("not UTF-8 text (binary file?)", path=spath, line=line) from None
    return text


def _require_text(nbytes: int, spath: str) -> None:
    require(
        nbytes * PARSE_BYTES_PER_BYTE,
        f"parsing {format_bytes(nbytes)} of trace text",
        "split the trace",
        spath,
    )


def _gunzip(handle, spath: str) -> bytes:
    """The decompressed bytes, read no further than the memory budget allows."""
    cap = current_budget() // PARSE_BYTES_PER_BYTE + 1
    blocks, size = [], 0
    try:
        with gzip.GzipFile(fileobj=handle) as unzipped:
            while size < cap and (block := unzipped.read(min(cap - size, 1 << 24))):
                blocks.append(block)  # blocks: read(cap) would reserve cap bytes at once
                size += len(block)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"corrupt gzip file: {err}", path=spath) from None
    raw = b"".join(blocks)
    if len(raw) >= cap:
        raise InputError(
            f"decompresses to more than {format_bytes(len(raw))} of text, beyond what the "
            f"memory budget of {format_bytes(current_budget())} parses ({PARSE_BYTES_PER_BYTE} "
            "bytes a byte of text; --memory-budget, or split the trace)",
            path=spath,
            field="memory-budget",
        )
    return raw


def _lines(text: str) -> list[str]:
    """The physical lines of ``text``, ended by ``\\n``, ``\\r\\n`` or ``\\r`` (which a JSON
    string cannot hold raw); not at U+2028, U+0085 and the other breaks ``str.splitlines``
    knows, which a JSON string may hold raw."""
    return _LINE_END.split(text)


def _first_line(text: str) -> str:
    """The first non-blank physical line, stripped ('' when none); reads no further."""
    m = re.search(r"\S", text)
    if m is None:
        return ""
    end = _LINE_END.search(text, m.start())
    return text[m.start() : None if end is None else end.start()].strip()


def _detect_container(text: str) -> str:
    return "jsonl" if _first_line(text).startswith("{") else "csv"


def _resolve_fields(spath, fmt, present, prompt_field, decode_field, container, line):
    """Pick (fmt, prompt field, output field) from the header/first object ``present``."""
    if fmt is None:
        if prompt_field is not None:
            fmt = container
        else:
            for name, (cont, pf, df) in FORMATS.items():
                if cont == container and pf is not None and pf in present and df in present:
                    fmt = name
                    break
            else:
                shown = ", ".join(repr(c) for c in list(present)[:8])
                raise InputError(
                    f"unknown trace format: {container.upper()} fields [{shown}] match none of "
                    f"{', '.join(n for n in FORMATS if FORMATS[n][1])}; give --format and/or "
                    "--prompt-field/--decode-field",
                    path=spath,
                    line=line,
                )
    pf = prompt_field if prompt_field is not None else FORMATS[fmt][1]
    df = decode_field if decode_field is not None else FORMATS[fmt][2]
    if pf is None:
        raise InputError(
            f"format {fmt!r} needs prompt_field and decode_field (--prompt-field/--decode-field)",
            path=spath,
            field="prompt_field",
        )
    return fmt, pf, df


def _parse_csv(text, spath, fmt, prompt_field, decode_field):
    first = _first_line(text)
    delimiter = "\t" if ("\t" in first and "," not in first) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = None
    header_line = 0
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                header = column_names(row)
                header_line = reader.line_num
                break
    except csv.Error as err:
        raise InputError(f"malformed CSV: {err}", path=spath, line=reader.line_num) from None
    if header is None:
        raise InputError("empty trace: no header and no request rows", path=spath, line=1)
    check_unique_columns(header, spath, header_line)
    fmt, pf, df = _resolve_fields(
        spath, fmt, header, prompt_field, decode_field, "csv", header_line
    )
    for f in (pf, df):
        if f not in header:
            raise InputError(
                f"missing column (header has: {', '.join(header)})",
                path=spath,
                line=header_line,
                field=f,
            )
    ip, idd = header.index(pf), header.index(df)
    need = max(ip, idd)
    prompts: list[str] = []
    outputs: list[str] = []
    line_nums: list[int] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            check_row_width(row, len(header), spath, reader.line_num)
            if len(row) <= need:
                missing = pf if len(row) <= ip else df
                raise InputError(
                    f"row has {len(row)} fields, header has {len(header)}",
                    path=spath,
                    line=reader.line_num,
                    field=missing,
                )
            prompts.append(row[ip])
            outputs.append(row[idd])
            line_nums.append(reader.line_num)
    except csv.Error as err:
        raise InputError(f"malformed CSV: {err}", path=spath, line=reader.line_num) from None
    prompt = _to_int_array(prompts, line_nums, spath, pf)
    output = _to_int_array(outputs, line_nums, spath, df)
    last = line_nums[-1] if line_nums else header_line
    return fmt, pf, df, prompt, output, last


def column_names(row: list[str]) -> list[str]:
    """A header row's column names, stripped; a trailing delimiter names no column (a value
    under it is an extra field, :func:`check_row_width`)."""
    names = [c.strip() for c in row]
    while names and not names[-1]:
        names.pop()
    return names


def check_unique_columns(header: list[str], spath: str, line: int) -> None:
    """A column name given twice is ambiguous (which one holds P?): an error naming it."""
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name and name in seen:
            raise InputError(
                f"column name appears twice in the header (columns #{seen[name]} and #{i})",
                path=spath,
                line=line,
                field=name,
            )
        seen.setdefault(name, i)


def check_row_width(row: list[str], width: int, spath: str, line: int) -> None:
    """A row with a non-blank value beyond the header's ``width`` columns (a stray delimiter
    would shift the columns after it): an error naming the first such field."""
    if len(row) > width and any(c.strip() for c in row[width:]):
        extra = next(c for c in row[width:] if c.strip())
        raise InputError(
            f"row has {len(row)} fields, header has {width} (extra value "
            f"{shown(extra.strip())}; a stray delimiter would shift the columns)",
            path=spath,
            line=line,
            field=f"#{width + 1}",
        )


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` for :func:`json.loads`: a key given twice is an error."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _parse_jsonl(text, spath, fmt, prompt_field, decode_field):
    prompts: list = []
    outputs: list = []
    line_nums: list[int] = []
    pf = df = None
    for lineno, line in enumerate(_lines(text), start=1):
        s = line.strip()
        if not s:
            continue
        try:
            # floats as their text: 1e-400 would arrive as 0.0 (an integer) otherwise
            obj = json.loads(s, object_pairs_hook=_unique_keys, parse_float=str)
        except json.JSONDecodeError as err:
            raise InputError(f"invalid JSON: {err.msg}", path=spath, line=lineno) from None
        except _DuplicateKeyError as err:
            raise InputError(
                "key given twice in one JSON object", path=spath, line=lineno, field=err.key
            ) from None
        except ValueError:  # Python refuses integers of more than 4300 digits
            raise InputError(
                "invalid JSON: a number too long to read", path=spath, line=lineno
            ) from None
        except RecursionError:  # Python's parser recurses once per nested array or object
            raise InputError(
                "invalid JSON: nested too deeply to read", path=spath, line=lineno
            ) from None
        if not isinstance(obj, dict):
            raise InputError("expected one JSON object per line", path=spath, line=lineno)
        if pf is None:
            fmt, pf, df = _resolve_fields(
                spath, fmt, obj.keys(), prompt_field, decode_field, "jsonl", lineno
            )
        for f in (pf, df):
            if f not in obj:
                raise InputError("missing field", path=spath, line=lineno, field=f)
        prompts.append(obj[pf])
        outputs.append(obj[df])
        line_nums.append(lineno)
    if pf is None:
        if fmt is None:
            fmt = "jsonl"
        pf = prompt_field if prompt_field is not None else FORMATS[fmt][1]
        df = decode_field if decode_field is not None else FORMATS[fmt][2]
    prompt = _to_int_array(prompts, line_nums, spath, pf)
    output = _to_int_array(outputs, line_nums, spath, df)
    last = line_nums[-1] if line_nums else 1
    return fmt, pf, df, prompt, output, last


# --------------------------------------------------------------------------- values


def _to_int_array(values: list, line_nums: list[int], spath: str, fld: str) -> np.ndarray:
    """Convert raw cell values to int64, checking each is a finite non-negative integer."""
    out = np.empty(len(values), dtype=np.int64)
    # one check of the whole column; cell by cell only when some cell is not plain ASCII
    try:
        clean = plain("".join(values))  # CSV: every cell a str
    except TypeError:  # JSON numbers among them
        clean = plain("".join(v for v in values if type(v) is str))
    for i, v in enumerate(values):
        if type(v) is int:  # JSON ints: the fast path
            x = v
        elif isinstance(v, str):
            s = v.strip() if clean else check_plain(v.strip(), fld, path=spath, line=line_nums[i])
            try:
                x = int(s)
            except ValueError:
                x = _parse_number_str(s, line_nums[i], spath, fld)
        else:
            x = _parse_json_number(v, line_nums[i], spath, fld)
        if x < 0:
            raise InputError(
                f"negative value {shown(v)} (token counts are >= 0)",
                path=spath,
                line=line_nums[i],
                field=fld,
            )
        if x >= TOKEN_LIMIT:
            raise InputError(
                f"value {shown(v)} too large", path=spath, line=line_nums[i], field=fld
            )
        out[i] = x
    return out


def _parse_number_str(s: str, line: int, spath: str, fld: str) -> int:
    f = parse_float(s, fld, path=spath, line=line)
    if f < 0:
        raise InputError(
            f"negative value {shown(s)} (token counts are >= 0)", path=spath, line=line, field=fld
        )
    return integral(f, s, fld, path=spath, line=line)


def _parse_json_number(v, line: int, spath: str, fld: str) -> int:
    if v is None:
        raise InputError("null value", path=spath, line=line, field=fld)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InputError(f"not a number: {shown(v)}", path=spath, line=line, field=fld)
    f = float(v)
    if math.isfinite(f) and f < 0:
        raise InputError(
            f"negative value {shown(v)} (token counts are >= 0)", path=spath, line=line, field=fld
        )
    return integral(f, v, fld, path=spath, line=line)
