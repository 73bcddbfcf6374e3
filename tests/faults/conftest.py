from ..core.conftest import KEY, pg_url, sqlite_url, store_url  # noqa: F401 - the stores the fault tests run on
