"""A batch input file read line by line: errors name the line as an editor numbers it, and a file read again to run
what is left never loses a line, whatever the config says by then."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.batch.lines import read_lines
from gateway.config.native import parse_native
from tests.gateway.test_batch_config import config

URL = "/v1/chat/completions"


def line(custom_id: str, model: str = "chat", **body: Any) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": URL,
                         "body": {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}}) + b"\n"


def test_an_error_names_the_line_as_the_file_numbers_it_blank_lines_included() -> None:
    parsed = parse_native(config({"files": {"local_dir": "f"}, "models": {"chat": "chat-batch"}}))
    data = line("a") + b"\n\r\n" + line("b") + b"   \n" + b"{broken\n"
    lines, errors = read_lines(data, URL, parsed)
    assert [(x.number, x.custom_id) for x in lines] == [(1, "a"), (4, "b")]
    assert [(e["line"], e["code"]) for e in errors] == [(6, "invalid_json_line")]
    assert "Line 6" in errors[0]["message"]


def test_a_line_keeps_its_bytes_and_parses_its_body_only_when_it_runs() -> None:
    parsed = parse_native(config({"files": {"local_dir": "f"}, "models": {"chat": "chat-batch"}}))
    [one], _ = read_lines(line("a", stream=True), URL, parsed)
    assert one.alias == "chat-batch" and one.body()["stream"] is True and one.body() is not one.body()


def test_a_file_read_again_under_a_narrower_config_returns_every_line_refusing_what_cannot_run() -> None:
    before = parse_native(config({"files": {"local_dir": "f"}, "models": {"chat": "chat-batch"}}))
    data = b"".join(line(f"c{i}") for i in range(5)) + line("direct", model="chat-batch")
    assert len(read_lines(data, URL, before)[0]) == 6
    after = parse_native(config({"files": {"local_dir": "f"}, "max_lines": 2}))  # no mapping, a lower cap
    assert read_lines(data, URL, after)[0] == []  # a new batch: refused whole
    lines, errors = read_lines(data, URL, after, rerun=True)
    assert errors == [] and [x.custom_id for x in lines] == [f"c{i}" for i in range(5)] + ["direct"]
    assert {x.refused["code"] for x in lines[:5] if x.refused} == {"model_not_batch_capable"}
    assert lines[5].refused is None and lines[5].alias == "chat-batch"


def test_a_line_larger_than_a_request_may_be_is_refused_naming_the_cap() -> None:
    doc = config({"files": {"local_dir": "f"}, "models": {"chat": "chat-batch"}})
    doc["gateway"]["front_door"] = {"body_bytes": 2048}
    parsed = parse_native(doc)
    lines, errors = read_lines(line("small") + line("big", extra="x" * 4000), URL, parsed)
    assert [x.custom_id for x in lines] == ["small"]
    assert [(e["line"], e["code"]) for e in errors] == [(2, "line_too_large")]
    assert "gateway.front_door.body_bytes" in errors[0]["message"]
