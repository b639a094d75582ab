"""Fetcher over s3:// against a real S3-protocol server (moto) on loopback."""

from __future__ import annotations

import socket
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from http_fixtures import HTML_PAGE, make_jpeg
from s3_fixtures import S3Server

from visprep.fetch import FETCH_STATUSES, Fetcher, FetchResult, FetchSettings
from visprep.fetch.s3_source import _storage_options

pytest.importorskip("s3fs")
pytest.importorskip("moto")

MAX_BYTES = 50_000
MANY = 50
IMAGES = [make_jpeg(seed=i) for i in range(5)]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    objects = {f"images/{i}.jpg": IMAGES[i % len(IMAGES)] for i in range(MANY)}
    objects["pages/error.jpg"] = HTML_PAGE
    objects["big/huge.jpg"] = IMAGES[0] + b"\0" * (2 * MAX_BYTES)
    with S3Server(objects) as server:
        yield server


@pytest.fixture(scope="module")
def fetcher(s3: S3Server) -> Iterator[Fetcher]:
    settings = FetchSettings(
        concurrency=8, timeout_s=5.0, retries=1, backoff_s=0.01, max_bytes=MAX_BYTES,
        s3_options=s3.storage_options,
    )
    with Fetcher(settings) as f:
        yield f


def _check_invariants(result: FetchResult) -> None:
    assert result.status in FETCH_STATUSES
    assert result.ok == (result.status == "ok")
    assert (result.data is not None) == result.ok
    assert result.http_status is None  # not an HTTP source
    if not result.ok:
        assert result.url in result.reason


def test_image_ok(s3: S3Server, fetcher: Fetcher) -> None:
    result = fetcher.fetch(s3.url("images/3.jpg"))
    _check_invariants(result)
    assert result.ok and result.format == "jpeg" and result.data == IMAGES[3]
    assert result.attempts == 1 and result.final_url == result.url


def test_missing_key_is_not_found(s3: S3Server, fetcher: Fetcher) -> None:
    result = fetcher.fetch(s3.url("images/absent.jpg"))
    _check_invariants(result)
    assert (result.status, result.attempts) == ("not_found", 1)


def test_missing_bucket_is_not_found(fetcher: Fetcher) -> None:
    result = fetcher.fetch("s3://visprep-no-such-bucket/a.jpg")
    _check_invariants(result)
    assert (result.status, result.attempts) == ("not_found", 1)


def test_non_image_object_is_not_image(s3: S3Server, fetcher: Fetcher) -> None:
    result = fetcher.fetch(s3.url("pages/error.jpg"))
    _check_invariants(result)
    assert (result.status, result.attempts) == ("not_image", 1)


def test_oversized_object_is_refused_by_its_size(s3: S3Server, fetcher: Fetcher) -> None:
    result = fetcher.fetch(s3.url("big/huge.jpg"))
    _check_invariants(result)
    assert (result.status, result.attempts) == ("too_large", 1)
    assert f"max_bytes={MAX_BYTES}" in result.reason


def test_url_without_key_is_invalid(s3: S3Server, fetcher: Fetcher) -> None:
    result = fetcher.fetch(f"s3://{s3.bucket}")
    _check_invariants(result)
    assert result.status == "invalid_url"


def test_fetch_many_yields_each_url_once(s3: S3Server, fetcher: Fetcher) -> None:
    urls = [s3.url(f"images/{i}.jpg") for i in range(MANY)] + [s3.url("images/absent-1.jpg")]
    results = list(fetcher.fetch_many(urls))
    assert Counter(r.url for r in results) == Counter(urls)
    by_url = {r.url: r for r in results}
    for i in range(MANY):
        result = by_url[s3.url(f"images/{i}.jpg")]
        _check_invariants(result)
        assert result.ok and result.data == IMAGES[i % len(IMAGES)]
    assert by_url[s3.url("images/absent-1.jpg")].status == "not_found"


def test_object_uploaded_later_is_found(s3: S3Server, fetcher: Fetcher) -> None:
    s3.put("late/new.jpg", IMAGES[1])
    result = fetcher.fetch(s3.url("late/new.jpg"))
    assert result.ok and result.data == IMAGES[1]


def test_unreachable_endpoint_is_a_connection_error_not_a_crash() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s",
               "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True}
    settings = FetchSettings(timeout_s=2.0, retries=1, backoff_s=0.01, s3_options=options)
    with Fetcher(settings) as fetcher:
        result = fetcher.fetch("s3://bucket/key.jpg")
    _check_invariants(result)
    assert (result.status, result.attempts) == ("connection_error", 2)  # retried once, then reported
    assert result.elapsed_s < 5.0  # no retries multiplied inside botocore


def test_s3_without_s3fs_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # "import s3fs" now raises ImportError
    with Fetcher(FetchSettings()) as fetcher:
        result = fetcher.fetch("s3://bucket/key.jpg")
    assert result.status == "unsupported_scheme" and "pip install" in result.reason and "s3fs" in result.reason
    assert result.attempts == 1


def test_s3_options_are_copied_read_only() -> None:
    options = {"endpoint_url": "http://127.0.0.1:1", "secret": "sekrit-value"}
    settings = FetchSettings(s3_options=options)
    options["endpoint_url"] = "http://elsewhere"
    assert settings.s3_options is not None and settings.s3_options["endpoint_url"] == "http://127.0.0.1:1"
    with pytest.raises(TypeError):
        settings.s3_options["secret"] = "other"  # type: ignore[index]
    assert "sekrit-value" not in repr(settings)
    hash(settings)  # still usable as a dict key


@pytest.mark.parametrize("bad", [["endpoint_url"], "endpoint_url=x", {1: "x"}])
def test_s3_options_must_be_a_str_keyed_mapping(bad: object) -> None:
    with pytest.raises(ValueError, match="s3_options"):
        FetchSettings(s3_options=bad)  # type: ignore[arg-type]


def test_storage_options_merge_config_kwargs_over_timeouts() -> None:
    settings = FetchSettings(timeout_s=3.0, s3_options={"anon": True, "config_kwargs": {"read_timeout": 9.0}})
    options = _storage_options(settings)
    assert options["anon"] is True
    assert options["config_kwargs"] == {
        "connect_timeout": 3.0, "read_timeout": 9.0, "retries": {"total_max_attempts": 1}
    }
    assert _storage_options(FetchSettings(timeout_s=2.0)) == {
        "config_kwargs": {"connect_timeout": 2.0, "read_timeout": 2.0, "retries": {"total_max_attempts": 1}}
    }
