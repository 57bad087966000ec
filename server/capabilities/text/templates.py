"""Chat templates: what a client may pass to one, and rendering it off the event loop.

A chat template is Jinja code. The model's own template is the operator's choice and
trusted: it renders in time linear in the messages. A client's template is untrusted code
(``{% for a in range(100000) %}`` nested, ``'x' * 10**9``) and is refused unless
``limits.allow_client_chat_templates`` is set. ``chat_template_kwargs`` carries template
variables (``enable_thinking``, ``reasoning_effort``): data, which the sandboxed template
environment never runs as code. Keys that would instead replace the template or change how
it renders (``apply_chat_template``'s own parameters) are refused by name.

Rendering and tokenizing run on the engine pool with a time limit, so a long conversation
never holds the event loop. A thread cannot be stopped: a render past the limit is abandoned
and finishes on its own. For the trusted template that is bounded by the messages, which the
body size limits; for client templates (when allowed) the renders at once, abandoned ones
included, are capped, so they cannot take every thread of the pool.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from engines import workpools
from engines.base import TextGenerationEngine
from engines.workpools import WorkPool
from schemas.errors import ApiError, ErrorCode
from schemas.openai.chat import ChatCompletionRequest
from server.errors import bad_request
from server.settings import Limits

# transformers' apply_chat_template parameters, and what else names a template or its
# environment: from a client these would swap the template (code) or what rendering returns.
RENDERING_CONTROLS = frozenset(
    {
        "chat_template",
        "conversation",
        "messages",
        "tools",
        "documents",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "processor_kwargs",
    }
)
_CONTROL_WORDS = ("template", "jinja")


class ChatTemplateInput:
    """What the server passes to the model's chat template for one request."""

    __slots__ = ("client_template", "kwargs")

    def __init__(self, kwargs: dict[str, Any] | None, client_template: bool) -> None:
        self.kwargs = kwargs
        self.client_template = client_template

    @property
    def param(self) -> str:
        """The field a failed render is blamed on."""
        return "chat_template" if self.client_template else "messages"


def template_input(request: ChatCompletionRequest, limits: Limits) -> ChatTemplateInput:
    """The request's template variables, checked; its own template only where allowed."""
    kwargs = dict(request.chat_template_kwargs or {})
    template: object = request.chat_template
    param = "chat_template"
    if "chat_template" in kwargs:
        if template is not None:
            raise bad_request("Give chat_template once, not also in chat_template_kwargs.", "chat_template")
        template, param = kwargs.pop("chat_template"), "chat_template_kwargs.chat_template"
    if template is not None:
        if not limits.allow_client_chat_templates:
            raise bad_request("This server renders every chat with the model's own chat template.", param)
        if not isinstance(template, str) or not template:
            raise bad_request("chat_template must be a non-empty string.", param)
    for key in kwargs:
        if not key.isidentifier() or key.startswith("_"):
            raise bad_request(f"'{key}' is not a template variable name.", f"chat_template_kwargs.{key}")
        lowered = key.lower()
        if key in RENDERING_CONTROLS or any(word in lowered for word in _CONTROL_WORDS):
            hint = " (use the request's own field)" if key in ("tools", "add_generation_prompt", "messages") else ""
            raise bad_request(
                f"chat_template_kwargs may hold template variables only; '{key}' controls the rendering{hint}.",
                f"chat_template_kwargs.{key}",
            )
    if template is not None:
        kwargs["chat_template"] = template
    return ChatTemplateInput(kwargs or None, client_template=template is not None)


def generation_prompt(add_generation_prompt: bool | None, continue_final_message: bool) -> bool:
    """Whether the template opens a new assistant turn. vLLM's fields: by default it does,
    unless the final message is continued; asking for both is a contradiction."""
    if add_generation_prompt and continue_final_message:
        raise bad_request(
            "continue_final_message and add_generation_prompt cannot both be true: the one continues "
            "the last message, the other opens a new one.",
            "continue_final_message",
        )
    return not continue_final_message if add_generation_prompt is None else add_generation_prompt


class TemplateRenderer:
    """Renders chat templates on the engine pool, within the configured time."""

    def __init__(self, limits: Limits) -> None:
        self.timeout_s = limits.chat_template_timeout_s
        self._client_renders = threading.BoundedSemaphore(max(limits.max_client_template_renders, 1))

    async def render(
        self,
        engine: TextGenerationEngine,
        messages: list[dict[str, Any]],
        template: ChatTemplateInput,
        *,
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
        continue_final_message: bool = False,
    ) -> list[int]:
        def render() -> list[int]:
            return engine.render_chat(
                messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                template_kwargs=template.kwargs,
            )

        def client_render() -> list[int]:
            # Taken and given back on the render's own thread: a render abandoned at the time
            # limit keeps its place until it really ends, and one that never started has none.
            if not self._client_renders.acquire(blocking=False):
                raise ApiError(
                    ErrorCode.SERVICE_NOT_AVAILABLE,
                    "Too many client chat templates are rendering; try again shortly.",
                    retry_after=self.timeout_s,
                )
            try:
                return render()
            finally:
                self._client_renders.release()

        work = client_render if template.client_template else render

        try:
            async with asyncio.timeout(self.timeout_s):
                return await workpools.run_in(WorkPool.ENGINE, work)
        except TimeoutError:
            raise bad_request(
                f"The chat template did not render these messages within {self.timeout_s:g} s.", template.param
            ) from None
