"""Image fetching: http(s)://, file://, local paths and s3:// with retries, limits and an SSRF guard.

The library never writes anything; the fetch stage (`visprep.fetch.stage`) records results in tables.
"""

from visprep.fetch.client import Fetcher
from visprep.fetch.guard import AddressPolicy
from visprep.fetch.result import FETCH_STATUSES, FetchResult, FetchStatus
from visprep.fetch.settings import FetchSettings

__all__ = ["FETCH_STATUSES", "AddressPolicy", "FetchResult", "FetchSettings", "FetchStatus", "Fetcher"]
