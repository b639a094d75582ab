"""Fetcher over file://, bare paths, s3:// and unknown schemes; settings validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from http_fixtures import HTML_PAGE, make_jpeg
from pydantic import ValidationError

from visprep.config import FetchConfig
from visprep.fetch import Fetcher, FetchSettings


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(FetchSettings(retries=0))


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "a photo ä.jpg"
    path.write_bytes(make_jpeg(seed=3))
    return path


def test_file_url(fetcher: Fetcher, image_file: Path) -> None:
    result = fetcher.fetch(image_file.as_uri())  # percent-encoded space and umlaut
    assert result.ok and result.format == "jpeg" and result.data == image_file.read_bytes()
    assert result.http_status is None and result.attempts == 1


def test_bare_local_path(fetcher: Fetcher, image_file: Path) -> None:
    result = fetcher.fetch(str(image_file))
    assert result.ok and result.data == image_file.read_bytes()


def test_missing_file_is_not_found(fetcher: Fetcher, tmp_path: Path) -> None:
    for url in (str(tmp_path / "nope.jpg"), (tmp_path / "nope.jpg").as_uri()):
        result = fetcher.fetch(url)
        assert result.status == "not_found"
        assert url in result.reason


def test_directory_is_refused_before_it_is_opened(fetcher: Fetcher, tmp_path: Path) -> None:
    result = fetcher.fetch(str(tmp_path))
    assert result.status == "local_path_refused" and "is a directory" in result.reason


def test_local_html_is_not_image_and_not_quoted(fetcher: Fetcher, tmp_path: Path) -> None:
    path = tmp_path / "page.jpg"
    path.write_bytes(HTML_PAGE)
    result = fetcher.fetch(str(path))
    assert result.status == "not_image" and "looks like HTML" in result.reason
    assert "DOCTYPE" not in result.reason and "Not found" not in result.reason


def test_local_file_too_large(tmp_path: Path, image_file: Path) -> None:
    with Fetcher(FetchSettings(max_bytes=1024)) as fetcher:  # the smallest limit; the image is larger
        result = fetcher.fetch(str(image_file))
    assert result.status == "too_large" and "max_bytes=1024" in result.reason


def test_file_url_with_remote_host_is_invalid(fetcher: Fetcher) -> None:
    assert fetcher.fetch("file://server/share/x.jpg").status == "invalid_url"


@pytest.mark.parametrize("url", ["ftp://example.com/x.jpg", "data:image/png;base64,AAAA", "gopher://x/"])
def test_unsupported_scheme_lists_supported_ones(fetcher: Fetcher, url: str) -> None:
    result = fetcher.fetch(url)
    assert result.status == "unsupported_scheme" and "https://" in result.reason and result.attempts == 0


def test_empty_url_is_invalid(fetcher: Fetcher) -> None:
    assert fetcher.fetch("  ").status == "invalid_url"


def test_non_str_url_raises(fetcher: Fetcher) -> None:
    with pytest.raises(TypeError, match="url must be a str"):
        fetcher.fetch(None)  # type: ignore[arg-type]


def test_closed_fetcher_raises(image_file: Path) -> None:
    fetcher = Fetcher(FetchSettings())
    fetcher.close()
    with pytest.raises(RuntimeError):
        fetcher.fetch(str(image_file))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("concurrency", 0),
        ("concurrency", 2.5),
        ("timeout_s", 0),
        ("timeout_s", float("nan")),
        ("timeout_s", float("inf")),
        ("retries", -1),
        ("max_bytes", True),
        ("max_bytes", 100),
        ("allow_private", "yes"),
        ("user_agent", ""),
        ("user_agent", "a\nX-Injected: 1"),
        ("checkpoint_every", 5),  # a stage option of [fetch], not the client's
    ],
)
def test_settings_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        FetchSettings(**{field: value})  # type: ignore[arg-type]


def test_settings_defaults_and_validation_are_the_fetch_sections() -> None:
    """One definition: the library's settings have the `[fetch]` section's client options, defaults and limits."""
    client = set(FetchConfig.model_fields) - {"checkpoint_every", "retry_failed"}
    assert set(FetchSettings.model_fields) == client
    assert FetchSettings().model_dump() == FetchConfig().model_dump(include=client)
    assert FetchSettings.from_config(FetchConfig()) == FetchSettings()
    for name in client:
        assert repr(FetchSettings.model_fields[name]) == repr(FetchConfig.model_fields[name]), name
    changed = FetchConfig(concurrency=3, timeout_s=2.0, retries=0, backoff_s=0.1, max_backoff_s=1.0, max_bytes=4096,
                          max_redirects=1, allow_private=True, allow_loopback=True, user_agent="ua", ca_bundle=None,
                          s3_options={"anon": True}, local_paths="any", checkpoint_every=7, retry_failed=True)
    settings = FetchSettings.from_config(changed)
    assert {n: getattr(settings, n) for n in client} == {n: getattr(changed, n) for n in client}
    with pytest.raises(ValidationError, match="max_bytes"):
        FetchConfig(max_bytes=100)  # the same limit at config load


def test_fetcher_needs_settings() -> None:
    with pytest.raises(TypeError, match="FetchSettings"):
        Fetcher({"concurrency": 4})  # type: ignore[arg-type]
