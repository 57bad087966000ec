"""SamplingOptions -> vLLM's SamplingParams: greedy n > 1, and vLLM's refusals as 400s."""

from __future__ import annotations

import pytest

from engines.base import SamplingOptions
from engines.errors import InvalidJob
from engines.llm.generate import greedy_copies, to_sampling_params


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_greedy_with_n_above_one_computes_one_sequence_for_n_choices(temperature: float) -> None:
    options = SamplingOptions(n=3, temperature=temperature, max_tokens=4)
    params = to_sampling_params(options)  # vLLM itself refuses n=3 when greedy
    assert params.n == 1
    assert greedy_copies(options) == 3


def test_sampling_with_n_above_one_is_left_to_vllm() -> None:
    options = SamplingOptions(n=3, temperature=0.7, max_tokens=4)
    assert to_sampling_params(options).n == 3
    assert greedy_copies(options) == 1
    assert greedy_copies(SamplingOptions(n=3)) == 1  # the model's default temperature
    assert greedy_copies(SamplingOptions(n=1, temperature=0.0)) == 1


def test_vllm_validation_errors_are_the_requests_fault() -> None:
    # vLLM raises its own VLLMValidationError (not a ValueError) here.
    with pytest.raises(InvalidJob) as caught:
        to_sampling_params(SamplingOptions(repetition_penalty=0.0))
    assert "repetition_penalty" in caught.value.message
