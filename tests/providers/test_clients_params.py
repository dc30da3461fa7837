from __future__ import annotations

import pytest

from providers.base import ErrorKind, ProviderError
from providers.catalogue import (
    CF_TEXT_MODEL,
    CF_VISION_MODEL,
    DASHSCOPE_MODEL,
    MODEL_PROVIDER,
    QIANFAN_MODEL,
)
from providers.params import PARAM_SPECS, ParamSpec, validate_params


def rejected(model: str, params: dict[str, object]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        validate_params(model, params)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    return caught.value


def test_every_model_has_specs_and_a_provider() -> None:
    assert set(PARAM_SPECS) == set(MODEL_PROVIDER) == {
        CF_TEXT_MODEL,
        CF_VISION_MODEL,
        DASHSCOPE_MODEL,
        QIANFAN_MODEL,
    }
    for specs in PARAM_SPECS.values():
        for spec in specs.values():
            assert isinstance(spec, ParamSpec) and spec.label and spec.help


def test_cloudflare_always_has_a_max_tokens_default_above_the_upstream_256() -> None:
    for model in (CF_TEXT_MODEL, CF_VISION_MODEL):
        assert PARAM_SPECS[model]["max_tokens"].default == 1024


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (CF_TEXT_MODEL, {"temperature": 0, "top_p": 2, "top_k": 50, "seed": 9_999_999_999}),
        (CF_VISION_MODEL, {"temperature": 5, "top_k": 1, "max_tokens": 1, "seed": 1}),
        (CF_TEXT_MODEL, {"repetition_penalty": 0, "frequency_penalty": 2, "presence_penalty": 1}),
        (DASHSCOPE_MODEL, {"max_tokens": 512, "temperature": 0, "top_p": 1, "top_k": 3}),
        (QIANFAN_MODEL, {"temperature": 1, "top_k": 1, "top_p": 1, "penalty_score": 2}),
        (QIANFAN_MODEL, {"stop": ["###", "x" * 20, "a", "b"]}),
    ],
)
def test_it_accepts_values_on_the_documented_bounds(model: str, params: dict[str, object]) -> None:
    assert validate_params(model, params) == params


@pytest.mark.parametrize(
    ("model", "name", "value", "words"),
    [
        (CF_TEXT_MODEL, "temperature", 5.01, "≤ 5"),
        (CF_TEXT_MODEL, "temperature", -0.1, "0 ≤"),
        (CF_TEXT_MODEL, "top_p", 2.5, "≤ 2"),
        (CF_TEXT_MODEL, "top_k", 51, "≤ 50"),
        (CF_TEXT_MODEL, "top_k", 0, "1 ≤"),
        (CF_VISION_MODEL, "max_tokens", 0, "1 ≤"),
        (CF_TEXT_MODEL, "seed", 10_000_000_000, "9999999999"),
        (CF_TEXT_MODEL, "seed", 0, "1 ≤"),
        (CF_TEXT_MODEL, "presence_penalty", 2.1, "≤ 2"),
        (DASHSCOPE_MODEL, "top_p", 0, "0 <"),
        (DASHSCOPE_MODEL, "temperature", -0.1, "0 ≤"),
        (DASHSCOPE_MODEL, "max_tokens", 8193, "≤ 8192"),
        (QIANFAN_MODEL, "max_tokens", 8193, "≤ 8192"),
        (CF_TEXT_MODEL, "max_tokens", 10**20, "≤ 128000"),
        (QIANFAN_MODEL, "temperature", 1.2, "≤ 1"),
        (QIANFAN_MODEL, "penalty_score", 0.9, "1 ≤"),
        (QIANFAN_MODEL, "top_k", 0, "1 ≤"),
        (QIANFAN_MODEL, "top_p", 1.5, "≤ 1"),
        (DASHSCOPE_MODEL, "top_k", 0, "1 ≤"),
    ],
)
def test_it_rejects_out_of_range_values_naming_parameter_and_range(
    model: str, name: str, value: float, words: str
) -> None:
    error = rejected(model, {name: value})
    assert repr(name) in error.message
    assert words in error.message


def test_the_seed_ranges_hold_where_the_seeds_are_looser_than_qwen() -> None:
    # Seed 003: top_p in [0, 1]; seed 002: top_k above 100 turns it off, temperature >= 0.
    assert validate_params(QIANFAN_MODEL, {"top_p": 0}) == {"top_p": 0.0}
    assert validate_params(DASHSCOPE_MODEL, {"top_k": 500, "temperature": 3}) == {
        "top_k": 500, "temperature": 3.0}
    assert validate_params(QIANFAN_MODEL, {"user_id": "u-1"}) == {"user_id": "u-1"}


def test_it_rejects_parameters_another_model_accepts() -> None:
    error = rejected(QIANFAN_MODEL, {"seed": 100})
    assert "'seed'" in error.message
    assert "penalty_score" in error.message  # the allowed list is named
    rejected(DASHSCOPE_MODEL, {"seed": 3})
    rejected(CF_TEXT_MODEL, {"penalty_score": 1.5})


def test_it_rejects_an_unknown_model() -> None:
    error = rejected("gpt-4o", {})
    assert error.vendor_code == "unknown_model"


@pytest.mark.parametrize(
    "stop", [["a", "b", "c", "d", "e"], ["x" * 21], "x" * 21, [1, 2], {"a": 1}]
)
def test_it_rejects_qianfan_stop_lists_outside_the_rules(stop: object) -> None:
    assert "'stop'" in rejected(QIANFAN_MODEL, {"stop": stop}).message


@pytest.mark.parametrize("value", [True, "abc", float("nan"), float("inf"), 2.5, [3]])
def test_it_rejects_values_of_the_wrong_type_for_an_integer(value: object) -> None:
    rejected(CF_TEXT_MODEL, {"top_k": value})


def test_it_coerces_numeric_strings_and_integral_floats_and_drops_none() -> None:
    cleaned = validate_params(CF_TEXT_MODEL, {"top_k": 5.0, "temperature": " 0.7", "seed": None})
    assert cleaned == {"top_k": 5, "temperature": 0.7}
    assert isinstance(cleaned["top_k"], int)
