from __future__ import annotations

import socket
from typing import Any

import pytest

from schemas.errors import ApiError, ErrorCode
from server.netguard import check_public_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.8.9.10:8080/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://100.64.0.1/hook",
        "http://[::1]/hook",
        "http://[::]/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[2002:7f00:1::]/hook",  # 6to4 wrapping 127.0.0.1
        "http://localhost:9000/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one decimal number
    ],
)
def test_private_destinations_are_refused(url: str) -> None:
    with pytest.raises(ApiError) as info:
        check_public_url(url, allow_private=False)
    assert info.value.code is ErrorCode.INVALID_REQUEST_BODY
    assert info.value.status == 400
    assert info.value.param == "webhook.url"


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/hook", "file:///etc/passwd", "gopher://x", "http:///nohost", "nope"])
def test_non_http_urls_are_refused_even_when_private_is_allowed(url: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(ApiError):
            check_public_url(url, allow_private=allow_private, param="extra.webhook.url")


def test_public_literals_pass_and_allow_private_checks_only_the_scheme() -> None:
    check_public_url("https://8.8.8.8/hook?token=x", allow_private=False)
    check_public_url("http://[2001:4860:4860::8888]:8443/hook", allow_private=False)
    check_public_url("http://127.0.0.1:9000/hook", allow_private=True)
    check_public_url("http://localhost/hook", allow_private=True)


def test_every_resolved_address_must_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, list[str]] = {
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "rebind.example": ["93.184.216.34", "127.0.0.1"],
        "zone.example": ["fe80::1%eth0"],
    }

    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    check_public_url("https://public.example/hook", allow_private=False)
    for url in ["https://rebind.example/hook", "https://zone.example/hook", "https://unknown.example/hook"]:
        with pytest.raises(ApiError, match=r"public|resolved"):
            check_public_url(url, allow_private=False)
