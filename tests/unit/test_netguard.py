from __future__ import annotations

import ipaddress

import pytest

from schemas.errors import ApiError, ErrorCode
from server.netguard import IPAddress, Resolver, check_public_url_async


def resolver(answers: dict[str, list[str]]) -> Resolver:
    def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in answers:
            raise OSError("unknown host")
        return [ipaddress.ip_address(address.split("%", 1)[0]) for address in answers[host]]

    return resolve


async def check_public_url(url: str, *, allow_private: bool, param: str = "webhook.url", **answers: list[str]) -> None:
    await check_public_url_async(url, allow_private=allow_private, param=param, resolver=resolver(answers))


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
async def test_private_destinations_are_refused(url: str) -> None:
    with pytest.raises(ApiError) as info:
        # The real resolver: "localhost" and "2130706433" are read by the system's.
        await check_public_url_async(url, allow_private=False)
    assert info.value.code is ErrorCode.INVALID_REQUEST_BODY
    assert info.value.status == 400
    assert info.value.param == "webhook.url"


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/hook", "file:///etc/passwd", "gopher://x", "http:///nohost", "nope"])
async def test_non_http_urls_are_refused_even_when_private_is_allowed(url: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(ApiError):
            await check_public_url(url, allow_private=allow_private, param="extra.webhook.url")


async def test_public_literals_pass_and_allow_private_checks_only_the_scheme() -> None:
    await check_public_url("https://8.8.8.8/hook?token=x", allow_private=False)
    await check_public_url("http://[2001:4860:4860::8888]:8443/hook", allow_private=False)
    await check_public_url("http://127.0.0.1:9000/hook", allow_private=True)
    await check_public_url("http://unresolvable.test/hook", allow_private=True)


async def test_every_resolved_address_must_be_public() -> None:
    answers: dict[str, list[str]] = {
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "rebind.example": ["93.184.216.34", "127.0.0.1"],
        "zone.example": ["fe80::1%eth0"],
    }
    await check_public_url("https://public.example/hook", allow_private=False, **answers)
    for url in ["https://rebind.example/hook", "https://zone.example/hook", "https://unknown.example/hook"]:
        with pytest.raises(ApiError, match=r"public|resolved"):
            await check_public_url(url, allow_private=False, **answers)


async def test_a_host_is_resolved_under_its_idna_2008_name() -> None:
    # Python's IDNA 2003 codec would look up "strasse.example", which is not where httpx goes.
    answers = {"xn--strae-oqa.example": ["127.0.0.1"], "strasse.example": ["93.184.216.34"]}
    with pytest.raises(ApiError, match="not a public address"):
        await check_public_url("https://straße.example/hook", allow_private=False, **answers)


async def test_a_slow_lookup_is_refused_at_the_deadline() -> None:
    import time

    def slow(host: str, port: int) -> list[IPAddress]:
        time.sleep(0.5)
        return [ipaddress.ip_address("93.184.216.34")]

    with pytest.raises(ApiError, match=r"within 0\.1 s") as info:
        await check_public_url_async(
            "https://slow.example/", allow_private=False, param="webhook", timeout_s=0.1, resolver=slow
        )
    assert info.value.param == "webhook"
