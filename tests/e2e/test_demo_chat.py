"""demo-chat, the real SmolLM2-135M-Instruct, answers simple questions through the served
OpenAI API: greedy answers must name the expected fact. The questions are ones this small
model gets right; a broken build (wrong dequantisation, template or tokenizer) or engine
answers them with noise.
"""

from __future__ import annotations

import openai
import pytest

from engines.demo import CHAT_MODEL
from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

QUESTIONS = [
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("What is the opposite of hot?", "cold"),
]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=120)


@pytest.mark.parametrize(("question", "expected"), QUESTIONS)
def test_chat_answers_simple_questions(client: openai.OpenAI, question: str, expected: str) -> None:
    result = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=32,
        temperature=0,
    )
    answer = result.choices[0].message.content or ""
    assert expected in answer.lower(), answer


def test_streamed_answer_matches(client: openai.OpenAI) -> None:
    question, expected = QUESTIONS[0]
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=32,
        temperature=0,
        stream=True,
    )
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert expected in answer.lower(), answer


def test_tool_choice_auto_is_refused(client: openai.OpenAI) -> None:
    # SmolLM2's template knows no tools, so the catalog gives it no tool-call parser.
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "What time is it?"}],
            tools=[tool],  # type: ignore[list-item]
            max_tokens=8,
        )
    assert refused.value.param == "tool_choice"
