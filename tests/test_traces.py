"""Trace loaders: every format, detection, override, .gz, decode mapping, bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from conftest import trace_path

from afd_jax.errors import InputError
from afd_jax.workload.traces import load_trace

P = [100, 0, 37, 5]
OUT = [3, 1, 0, 12]


def write_csv(path, header, rows, sep=","):
    lines = [sep.join(header)] + [sep.join(str(x) for x in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


@pytest.fixture
def azure(tmp_path):
    rows = [("2023-11-16 18:15:46", p, d) for p, d in zip(P, OUT, strict=True)]
    return write_csv(tmp_path / "az.csv", ["TIMESTAMP", "ContextTokens", "GeneratedTokens"], rows)


FORMAT_FILES = {
    "azure": lambda t: write_csv(
        t / "a.csv",
        ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
        [(f"t{i}", p, d) for i, (p, d) in enumerate(zip(P, OUT, strict=True))],
    ),
    "mooncake": lambda t: write_jsonl(
        t / "m.jsonl",
        [
            {"timestamp": i, "input_length": p, "output_length": d, "hash_ids": [1, 2]}
            for i, (p, d) in enumerate(zip(P, OUT, strict=True))
        ],
    ),
    "vidur": lambda t: write_csv(
        t / "v.csv",
        ["arrived_at", "num_prefill_tokens", "num_decode_tokens", "pd_ratio"],
        [(0.5 * i, p, d, 1.5) for i, (p, d) in enumerate(zip(P, OUT, strict=True))],
    ),
    "burstgpt": lambda t: write_csv(
        t / "b.csv",
        ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"],
        [
            (i, "ChatGPT", p, d, p + d, "Conversation log")
            for i, (p, d) in enumerate(zip(P, OUT, strict=True))
        ],
    ),
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_FILES))
def test_format_detected_and_parsed(tmp_path, fmt):
    path = FORMAT_FILES[fmt](tmp_path)
    w = load_trace(path)
    assert w.format == fmt
    assert w.prompt.dtype == np.int64 and w.decode.dtype == np.int64
    np.testing.assert_array_equal(w.prompt, P)
    np.testing.assert_array_equal(w.decode, OUT)
    assert w.source == str(path) and w.decode_mapping == "output"
    # Explicit format gives the same.
    w2 = load_trace(path, fmt=fmt)
    np.testing.assert_array_equal(w2.decode, OUT)


@pytest.mark.parametrize("fmt", sorted(FORMAT_FILES))
def test_gzip(tmp_path, fmt):
    path = FORMAT_FILES[fmt](tmp_path)
    gz = tmp_path / (path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    w = load_trace(gz)
    assert w.format == fmt
    np.testing.assert_array_equal(w.prompt, P)
    np.testing.assert_array_equal(w.decode, OUT)


def test_generic_csv_and_jsonl_with_fields(tmp_path):
    c = write_csv(
        tmp_path / "g.csv",
        ["id", "in", "out"],
        [(i, p, d) for i, (p, d) in enumerate(zip(P, OUT, strict=True))],
    )
    w = load_trace(c, prompt_field="in", decode_field="out")
    assert w.format == "csv"
    np.testing.assert_array_equal(w.decode, OUT)
    j = write_jsonl(tmp_path / "g.jsonl", [{"a": p, "b": d} for p, d in zip(P, OUT, strict=True)])
    w = load_trace(j, fmt="jsonl", prompt_field="a", decode_field="b")
    assert w.format == "jsonl"
    np.testing.assert_array_equal(w.prompt, P)
    # Fields override a named format's defaults too; TSV is accepted.
    t = write_csv(tmp_path / "g.tsv", ["x", "y"], list(zip(P, OUT, strict=True)), sep="\t")
    np.testing.assert_array_equal(load_trace(t, prompt_field="x", decode_field="y").decode, OUT)


def test_integral_floats_and_quoted_cells(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text('ContextTokens,GeneratedTokens\n"3.0",2\n1e2, 4 \n')
    w = load_trace(path)
    np.testing.assert_array_equal(w.prompt, [3, 100])
    np.testing.assert_array_equal(w.decode, [2, 4])


def test_decode_mapping(azure):
    w = load_trace(azure, decode_mapping="output-minus-one")
    assert w.decode_mapping == "output-minus-one"
    np.testing.assert_array_equal(w.decode, [2, 0, 0, 11])  # output 0 -> D = 0, not -1
    np.testing.assert_array_equal(w.prompt, P)


def test_zero_decode_rows_kept(azure):
    w = load_trace(azure)
    assert w.n_requests == 4
    assert int(np.sum(w.decode == 0)) == 1


def test_shared_trace_loads():
    w = load_trace(trace_path("mooncake"))
    assert w.format == "mooncake" and w.n_requests == 12031
    w = load_trace(trace_path("azure_code"))
    assert w.format == "azure" and w.n_requests == 8819


# ------------------------------------------------------------------ bad input (library level)

BAD_CELLS = [
    ("abc", "not a number"),
    ("-3", "negative"),
    ("nan", "non-finite"),
    ("inf", "non-finite"),
    ("3.5", "not an integer"),
    ("", "empty value"),
    ("1_000", "not a number"),  # Python's int() reads 1000
    ("\u0661\u0660\u0660", "not a number"),  # Arabic-Indic 100: int() reads 100
    ("\uff15", "not a number"),  # full-width 5
    ("1_0.0", "not a number"),  # float() reads 10.0
]


@pytest.mark.parametrize(("cell", "reason"), BAD_CELLS)
def test_bad_csv_cell(tmp_path, cell, reason):
    path = tmp_path / "bad.csv"
    path.write_text(f"ContextTokens,GeneratedTokens\n5,6\n7,{cell}\n")
    with pytest.raises(InputError, match=reason) as info:
        load_trace(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, "GeneratedTokens")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"x"', "not a number"),
        ("-1", "negative"),
        ("NaN", "non-finite"),
        ("2.5", "not an integer"),
        ("null", "null"),
        ("true", "not a number"),
        ('"1_000"', "not a number"),
        ('"\u0661\u0660\u0660"', "not a number"),
    ],
)
def test_bad_jsonl_value(tmp_path, value, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"input_length": 1, "output_length": 2}\n\n{"input_length": '
        + value
        + ', "output_length": 2}\n'
    )
    with pytest.raises(InputError, match=reason) as info:
        load_trace(path)
    assert (info.value.line, info.value.field) == (3, "input_length")


def test_row_with_extra_fields(tmp_path):
    """Issue 13 class 4: `1,5,200,20` under three columns was read shifted (P = 5, D = 200)."""
    path = tmp_path / "x.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nt,4,6\n1,5,200,20\n")
    with pytest.raises(InputError, match="row has 4 fields, header has 3") as info:
        load_trace(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, "#4")
    assert "'20'" in str(info.value)


def test_row_with_blank_extra_fields_is_read(tmp_path):
    """Trailing empty cells (`t,5,6,,`) shift nothing: the row is read as written."""
    path = tmp_path / "x.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nt,5,6,,\nt,7,8\n")
    w = load_trace(path)
    np.testing.assert_array_equal(w.prompt, [5, 7])
    np.testing.assert_array_equal(w.decode, [6, 8])


def test_duplicate_column_name(tmp_path):
    """Issue 13 class 4: a column named twice silently used the first one."""
    path = tmp_path / "d.csv"
    path.write_text("ContextTokens,GeneratedTokens,ContextTokens\n1,5,200\n")
    with pytest.raises(InputError, match="appears twice") as info:
        load_trace(path)
    assert (info.value.line, info.value.field) == (1, "ContextTokens")
    # an unrelated column named twice is as ambiguous a header: refused too
    path.write_text("x,ContextTokens,GeneratedTokens,x\n0,1,5,0\n")
    with pytest.raises(InputError, match="appears twice") as info:
        load_trace(path)
    assert info.value.field == "x"


def test_duplicate_json_key(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"input_length": 1, "output_length": 2}\n'
        '{"input_length": 1, "output_length": 2, "output_length": 9}\n'
    )
    with pytest.raises(InputError, match="given twice") as info:
        load_trace(path)
    assert (info.value.line, info.value.field) == (2, "output_length")


def test_missing_file_and_unknown_format(tmp_path, azure):
    with pytest.raises(InputError, match="no such file"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="unknown trace format") as info:
        load_trace(azure, fmt="parquet")
    assert info.value.field == "format"
    odd = write_csv(tmp_path / "odd.csv", ["a", "b"], [(1, 2)])
    with pytest.raises(InputError, match="unknown trace format") as info:
        load_trace(odd)
    assert info.value.line == 1


def test_missing_column(tmp_path, azure):
    with pytest.raises(InputError, match="missing column") as info:
        load_trace(azure, fmt="vidur")
    assert (info.value.line, info.value.field) == (1, "num_prefill_tokens")
    j = write_jsonl(
        tmp_path / "m.jsonl", [{"input_length": 1, "output_length": 2}, {"input_length": 3}]
    )
    with pytest.raises(InputError, match="missing field") as info:
        load_trace(j)
    assert (info.value.line, info.value.field) == (2, "output_length")
    short = tmp_path / "short.csv"
    short.write_text("ContextTokens,GeneratedTokens\n1,2\n3\n")
    with pytest.raises(InputError) as info:
        load_trace(short)
    assert (info.value.line, info.value.field) == (3, "GeneratedTokens")


def test_empty_and_all_zero(tmp_path):
    header_only = tmp_path / "h.csv"
    header_only.write_text("ContextTokens,GeneratedTokens\n")
    with pytest.raises(InputError, match="empty trace"):
        load_trace(header_only)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(InputError, match="empty trace"):
        load_trace(blank)
    zeros = write_csv(tmp_path / "z.csv", ["ContextTokens", "GeneratedTokens"], [(5, 0), (6, 0)])
    with pytest.raises(InputError, match="every decode length is 0") as info:
        load_trace(zeros)
    assert info.value.field == "GeneratedTokens"
    ones = write_csv(tmp_path / "o.csv", ["ContextTokens", "GeneratedTokens"], [(5, 1), (6, 1)])
    assert load_trace(ones).n_requests == 2
    with pytest.raises(InputError, match="every decode length is 0"):
        load_trace(ones, decode_mapping="output-minus-one")


def test_not_gzip_and_binary(tmp_path):
    fake = tmp_path / "f.csv.gz"
    fake.write_text("ContextTokens,GeneratedTokens\n1,2\n")
    with pytest.raises(InputError, match="not gzip"):
        load_trace(fake)
    trunc = tmp_path / "t.csv.gz"
    trunc.write_bytes(gzip.compress(b"ContextTokens,GeneratedTokens\n1,2\n" * 50)[:30])
    with pytest.raises(InputError, match="gzip"):
        load_trace(trunc)
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"ContextTokens,GeneratedTokens\n\xff\xfe\x00,1\n")
    with pytest.raises(InputError, match="UTF-8") as info:
        load_trace(binary)
    assert info.value.line == 2


def test_trace_larger_than_the_memory_budget_is_refused_before_parsing(tmp_path):
    """A 13 MB gzip file of blank lines decompressed to 3 GB and the parse was killed for
    memory (a review of session 22): the text is read no further than the budget allows, at
    PARSE_BYTES_PER_BYTE bytes of memory per byte of text, compressed or not."""
    from afd_jax.memory import budget
    from afd_jax.workload.traces import PARSE_BYTES_PER_BYTE

    text = "ContextTokens,GeneratedTokens\n" + "100,20\n" * 20_000  # 140 kB
    plain = tmp_path / "t.csv"
    plain.write_text(text)
    packed = tmp_path / "t.csv.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    fits = len(text) * PARSE_BYTES_PER_BYTE
    for path in (plain, packed):
        with budget(fits // 2), pytest.raises(InputError, match="memory budget") as err:
            load_trace(path)
        assert err.value.path == str(path) and err.value.field == "memory-budget"
        with budget(fits + 1):
            assert load_trace(path).prompt.size == 20_000


def test_values_read_as_zero_or_too_long(tmp_path):
    """``1e-400`` underflowed to a prompt of 0 tokens, and a 5,000-digit cell was quoted
    whole in a 5 kB error line (a review of session 22)."""
    path = tmp_path / "t.csv"
    path.write_text("ContextTokens,GeneratedTokens\n0e5,5\n1e-400,5\n")
    with pytest.raises(InputError, match="not an integer: '1e-400'") as err:
        load_trace(path)
    assert err.value.line == 3
    path.write_text("ContextTokens,GeneratedTokens\n" + "9" * 5000 + ",5\n")
    with pytest.raises(InputError, match="non-finite value") as err:
        load_trace(path)
    assert len(str(err.value)) < len(str(path)) + 120


def test_line_ends_json_floats_and_large_budgets(tmp_path):
    """A review of this session's fixes: CR-only JSONL lines (a JSON string cannot hold a raw
    CR) load as before; a JSON 1e-400 is refused as in a CSV; a gzip trace reads under a
    budget far above the machine's memory (it reserved budget / 32 bytes at once)."""
    from afd_jax.memory import budget

    path = tmp_path / "cr.jsonl"
    path.write_bytes(
        b'{"input_length": 5, "output_length": 6}\r{"input_length": 7, "output_length": 8}\r'
    )
    assert load_trace(path).prompt.tolist() == [5, 7]
    path.write_text(
        '{"input_length": 5, "output_length": 6}\n{"input_length": 1e-400, "output_length": 6}\n'
    )
    with pytest.raises(InputError, match="not an integer: '1e-400'") as err:
        load_trace(path)
    assert err.value.line == 2
    packed = tmp_path / "t.csv.gz"
    packed.write_bytes(gzip.compress(b"ContextTokens,GeneratedTokens\n100,20\n"))
    with budget(1 << 50):
        assert load_trace(packed).decode.tolist() == [20]
