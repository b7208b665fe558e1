"""OpenAI <-> Gemini translation (gandalf_workers.translate.gemini).

Golden fixtures in tests/golden/gemini/ hold both directions: ``request_*``
(OpenAI request -> generateContent body), ``response_*`` (generateContent
response -> chat.completion) and ``stream_*`` (SSE objects -> chunks).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from gandalf_workers.translate import gemini as tr

GOLDEN = Path(__file__).parent / "golden" / "gemini"


def _golden(prefix: str) -> list[Any]:
    files = sorted(GOLDEN.glob(f"{prefix}_*.json"))
    assert files, f"no {prefix} fixtures in {GOLDEN}"
    return [pytest.param(json.loads(f.read_text()), id=f.stem) for f in files]


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# ---------------------------------------------------------------------- golden


@pytest.mark.parametrize("case", _golden("request"))
def test_golden_request(case: dict[str, Any]) -> None:
    assert tr.chat_request(case["openai"]) == case["gemini"]


@pytest.mark.parametrize("case", _golden("response"))
def test_golden_response(case: dict[str, Any]) -> None:
    out = tr.chat_response(case["gemini"], case["model"], created=case["created"])
    assert out == case["openai"]


@pytest.mark.parametrize("case", _golden("stream"))
def test_golden_stream(case: dict[str, Any]) -> None:
    translator = tr.StreamTranslator(case["model"], created=case["created"])
    chunks = [c for event in case["gemini_events"] for c in translator.feed(event)]
    assert translator.finished
    last = translator.usage_chunk()
    assert last is not None
    assert [*chunks, last] == case["openai_chunks"]


def test_golden_request_does_not_mutate_input() -> None:
    case = json.loads((GOLDEN / "request_tool_history.json").read_text())
    before = json.dumps(case["openai"], sort_keys=True)
    tr.chat_request(case["openai"])
    assert json.dumps(case["openai"], sort_keys=True) == before


# --------------------------------------------------------------------- request


def test_generation_config_absent_without_settings() -> None:
    body = tr.chat_request({"model": "m", "messages": [_user("hi")]})
    assert body == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_max_tokens_used_when_max_completion_tokens_absent() -> None:
    body = tr.chat_request({"messages": [_user("hi")], "max_tokens": 9, "stop": ["a", "b"]})
    assert body["generationConfig"] == {"maxOutputTokens": 9, "stopSequences": ["a", "b"]}


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "f"}},
     {"mode": "ANY", "allowedFunctionNames": ["f"]}),
])
def test_tool_choice_modes(choice: Any, config: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}]
    body = tr.chat_request({"messages": [_user("hi")], "tools": tools, "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_json_object_format() -> None:
    body = tr.chat_request({"messages": [_user("hi")],
                            "response_format": {"type": "json_object"}})
    assert body["generationConfig"] == {"responseMimeType": "application/json"}


def test_tool_message_for_unknown_call_id_is_a_client_error() -> None:
    with pytest.raises(tr.TranslationError, match="call_missing"):
        tr.chat_request({"messages": [_user("hi"), {"role": "tool", "tool_call_id":
                                                    "call_missing", "content": "x"}]})


def test_non_object_arguments_in_history_are_kept_as_an_object() -> None:
    body = tr.chat_request({"messages": [
        _user("hi"),
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]})
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {
        "arguments": "not json"}}}]
    assert body["contents"][2]["parts"] == [{"functionResponse": {
        "name": "f", "response": {"content": "ok"}}}]


def test_only_system_messages_is_a_client_error() -> None:
    with pytest.raises(tr.TranslationError):
        tr.chat_request({"messages": [{"role": "system", "content": "x"}]})


def test_unsupported_part_and_role_are_client_errors() -> None:
    with pytest.raises(tr.TranslationError, match="not supported"):
        tr.chat_request({"messages": [{"role": "user", "content": [{"type": "video"}]}]})
    with pytest.raises(tr.TranslationError, match="role"):
        tr.chat_request({"messages": [{"role": "robot", "content": "x"}]})


def test_percent_encoded_data_url_becomes_base64() -> None:
    body = tr.chat_request({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml,%3Csvg%2F%3E"}}]}]})
    part = body["contents"][0]["parts"][0]["inlineData"]
    assert part["mimeType"] == "image/svg+xml"
    assert base64.b64decode(part["data"]) == b"<svg/>"


def test_clean_schema_handles_refs_one_of_and_type_lists() -> None:
    schema = {
        "type": "object",
        "definitions": {"Name": {"type": "string", "description": "a name"},
                        "Alias": {"$ref": "#/definitions/Name"}},
        "properties": {
            "a": {"oneOf": [{"type": "string"}, {"type": "integer"}], "examples": ["x"]},
            "b": {"type": ["integer", "string"]},
            "c": {"$ref": "#/definitions/Alias", "description": "own"},
            "d": {"type": "string", "format": "date-time"},
            "e": {"type": "string", "format": "email"},
        },
        "patternProperties": {"^x": {}},
    }
    out = tr.clean_schema(schema)
    props = out["properties"]
    assert props["a"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert props["b"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    # A chain of $refs is inlined; the referring object's own keys win.
    assert props["c"] == {"type": "string", "description": "own"}
    assert props["d"] == {"type": "string", "format": "date-time"}
    assert props["e"] == {"type": "string"}
    assert "patternProperties" not in out and "definitions" not in out


def test_legit_defs_are_inlined() -> None:
    schema = {"$defs": {"Point": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}},
        "type": "object", "properties": {"a": {"$ref": "#/$defs/Point"},
                                         "b": {"type": "array",
                                               "items": {"$ref": "#/$defs/Point"}}}}
    point = {"type": "object", "properties": {"x": {"type": "number"},
                                              "y": {"type": "number"}},
             "required": ["x", "y"]}
    assert tr.clean_schema(schema) == {"type": "object", "properties": {
        "a": point, "b": {"type": "array", "items": point}}}


def _limit_code(schema: dict[str, Any]) -> str:
    """The error code of a schema over a bound, which must come quickly."""
    started = time.monotonic()
    with pytest.raises(tr.TranslationError) as err:
        tr.clean_schema(schema)
    assert time.monotonic() - started < 0.5
    return f"{err.value.code}: {err.value.message}"


def test_self_referencing_schema_is_recursive_at_once() -> None:
    # 129 bytes that used to expand to ~2^33 nodes (depth cap 32, fan-out 2).
    schema = json.loads('{"$defs":{"a":{"type":"object","properties":{"x":{"$ref":"#/$defs/a"},'
                        '"y":{"$ref":"#/$defs/a"}}}},"$ref":"#/$defs/a","type":"object"}')
    assert _limit_code(schema).startswith("schema_recursive: ")
    # A cycle through two definitions is one too.
    two = {"definitions": {"A": {"properties": {"b": {"$ref": "#/definitions/B"}}},
                           "B": {"items": {"$ref": "#/definitions/A"}}},
           "properties": {"a": {"$ref": "#/definitions/A"}}}
    assert _limit_code(two).startswith("schema_recursive: ")


def test_wide_fanout_schema_is_too_large() -> None:
    # Not recursive, but 10 properties per level over 6 levels: 10^6 objects.
    defs = {f"L{i}": {"type": "object", "properties": {
        f"p{j}": {"$ref": f"#/$defs/L{i + 1}"} for j in range(10)}} for i in range(6)}
    defs["L6"] = {"type": "string"}
    code = _limit_code({"$defs": defs, "$ref": "#/$defs/L0"})
    assert code.startswith("schema_too_large: ") and "10000 nodes" in code


def test_fanout_of_big_leaves_is_too_large_by_size() -> None:
    # Few nodes, but each inlined copy carries a 20 kB enum.
    big = {"type": "string", "enum": ["v" * 1000 + str(i) for i in range(20)]}
    schema = {"$defs": {"Big": big}, "type": "object",
              "properties": {f"p{i}": {"$ref": "#/$defs/Big"} for i in range(100)}}
    with pytest.raises(tr.TranslationError) as err:
        tr.clean_schema(schema)
    assert err.value.code == "schema_too_large" and "bytes" in err.value.message


def test_too_deep_schema() -> None:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        node = {"type": "object", "properties": {"x": node}}
    with pytest.raises(tr.TranslationError) as err:
        tr.clean_schema(node)
    assert err.value.code == "schema_too_deep" and "32" in err.value.message


def test_schema_limit_in_tools_and_response_format_is_a_client_error() -> None:
    schema = {"$defs": {"a": {"properties": {"x": {"$ref": "#/$defs/a"}}}},
              "$ref": "#/$defs/a"}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    for extra in ({"tools": [tool]}, {"response_format": fmt}):
        with pytest.raises(tr.TranslationError) as err:
            tr.chat_request({"model": "m", "messages": [_user("hi")], **extra})
        assert err.value.code == "schema_recursive"


# -------------------------------------------------------------------- response


@pytest.mark.parametrize(("reason", "calls", "expected"), [
    ("STOP", False, "stop"), ("STOP", True, "tool_calls"), ("MAX_TOKENS", False, "length"),
    ("SAFETY", False, "content_filter"), ("RECITATION", False, "content_filter"),
    ("BLOCKLIST", False, "content_filter"), ("PROHIBITED_CONTENT", False, "content_filter"),
    ("SPII", False, "content_filter"), ("OTHER", False, "stop"),
    ("MALFORMED_FUNCTION_CALL", False, "stop"),
])
def test_finish_reasons(reason: str, calls: bool, expected: str) -> None:
    assert tr.finish_reason(reason, calls) == expected


def _call_response(rid: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"x": 1}}},
        {"functionCall": {"name": "f", "args": {"x": 1}}}]}, "finishReason": "STOP"}]}
    if rid:
        data["responseId"] = rid
    return data


@pytest.mark.parametrize("rid", ["r-1", None])
def test_tool_call_ids_are_unique_and_stable(rid: str | None) -> None:
    first = tr.chat_response(_call_response(rid), "m")
    again = tr.chat_response(_call_response(rid), "m")
    ids = [c["id"] for c in first["choices"][0]["message"]["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert ids == [c["id"] for c in again["choices"][0]["message"]["tool_calls"]]
    assert "f" not in ids  # the original used the function name as the id
    if rid is not None:  # another response, the same call: another id
        other = tr.chat_response(_call_response("r-2"), "m")
        assert ids[0] != other["choices"][0]["message"]["tool_calls"][0]["id"]


def test_stream_and_whole_response_give_the_same_call_ids() -> None:
    whole = tr.chat_response(_call_response("r-9"), "m")
    translator = tr.StreamTranslator("m")
    chunks = translator.feed(_call_response("r-9"))
    streamed = [tc["id"] for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert streamed == [c["id"] for c in whole["choices"][0]["message"]["tool_calls"]]


def test_response_without_response_id_gets_a_generated_id_and_now() -> None:
    out = tr.chat_response({"candidates": [{"content": {"parts": [{"text": "x"}]},
                                            "finishReason": "MAX_TOKENS"}]}, "m")
    assert out["id"].startswith("chatcmpl-") and len(out["id"]) > 20
    assert out["created"] > 1_700_000_000
    assert out["choices"][0]["finish_reason"] == "length"
    assert "usage" not in out


def test_multiple_candidates_become_choices() -> None:
    data = {"candidates": [
        {"index": 0, "content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"},
        {"index": 1, "content": {"parts": [{"text": "b"}]}, "finishReason": "SAFETY"}]}
    out = tr.chat_response(data, "m")
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in out["choices"]] \
        == [(0, "a", "stop"), (1, "b", "content_filter")]


# ---------------------------------------------------------------------- stream


def test_stream_without_finish_is_not_finished() -> None:
    translator = tr.StreamTranslator("m")
    chunks = translator.feed({"candidates": [{"content": {"parts": [{"text": "hi"}]}}]})
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "hi"}]
    assert not translator.finished
    assert translator.usage_chunk() is None


def test_stream_skips_thoughts_and_keeps_the_last_usage() -> None:
    translator = tr.StreamTranslator("m")
    translator.feed({"candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}]}}],
                     "usageMetadata": {"promptTokenCount": 3, "thoughtsTokenCount": 2}})
    chunks = translator.feed({"candidates": [{"content": {"parts": [{"text": "ok"}]},
                                              "finishReason": "STOP"}],
                              "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1,
                                                "thoughtsTokenCount": 2,
                                                "totalTokenCount": 6}})
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": "ok"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    last = translator.usage_chunk()
    assert last is not None and last["choices"] == []
    assert last["usage"]["completion_tokens"] == 3 and last["usage"]["total_tokens"] == 6


def test_stream_blocked_prompt_finishes_with_content_filter() -> None:
    translator = tr.StreamTranslator("m")
    chunks = translator.feed({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})
    assert translator.finished
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


# ------------------------------------------------------------------ embeddings


def test_embedding_inputs() -> None:
    assert tr.embedding_inputs({"input": "a"}) == ["a"]
    assert tr.embedding_inputs({"input": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(tr.TranslationError) as err:
        tr.embedding_inputs({"input": [1, 2, 3]})
    assert err.value.code == "unsupported"
    with pytest.raises(tr.TranslationError):
        tr.embedding_inputs({"input": [[1, 2], [3]]})
    with pytest.raises(tr.TranslationError):
        tr.embedding_inputs({"input": []})


def test_batch_and_vertex_embedding_requests() -> None:
    payload = {"input": ["a", "b"], "dimensions": 4}
    assert tr.batch_embed_request(payload, ["a", "b"], "text-embedding-004") == {"requests": [
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]},
         "outputDimensionality": 4},
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]},
         "outputDimensionality": 4}]}
    assert tr.vertex_embed_request(payload, ["a", "b"]) == {
        "instances": [{"content": "a"}, {"content": "b"}],
        "parameters": {"outputDimensionality": 4}}
    assert tr.vertex_embed_request({"input": "a"}, ["a"]) == {"instances": [{"content": "a"}]}


def test_embedding_responses_and_base64() -> None:
    vectors = [[0.5, -0.25], [1.0, 0.0]]
    assert tr.batch_embed_vectors({"embeddings": [{"values": v} for v in vectors]}) == vectors
    got, tokens = tr.vertex_embed_vectors({"predictions": [
        {"embeddings": {"values": v, "statistics": {"token_count": 3.0}}} for v in vectors]})
    assert got == vectors and tokens == 6
    assert tr.estimate_tokens(["abcde", "abcd", ""]) == 3
    out = tr.embeddings_response(vectors, "m", 3, "base64")
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    raw = base64.b64decode(out["data"][1]["embedding"])
    assert struct.unpack("<2f", raw) == (1.0, 0.0)
    assert [d["index"] for d in out["data"]] == [0, 1]
