"""Fixtures of the HTTP tests: one real server (demo model on CPU) shared by the `test_api_real_*`
modules, with an OpenAI client and an httpx client on it. Modules that serve a fake engine define
their own `client` / `http`, which take precedence over these."""

from __future__ import annotations

import os

import httpx
import openai
import pytest
from real_server import Served, make_engine, serve


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The embedded demo checkpoint, written once per session into a temp cache dir."""
    from models.demo import ensure_demo_model

    cache = tmp_path_factory.getbasetemp() / "v4serve-cache"
    old = os.environ.get("V4SERVE_CACHE_DIR")
    os.environ["V4SERVE_CACHE_DIR"] = str(cache)
    try:
        return ensure_demo_model()
    finally:
        if old is None:
            os.environ.pop("V4SERVE_CACHE_DIR", None)
        else:
            os.environ["V4SERVE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def real(demo_dir):
    engine = make_engine(demo_dir)
    base_url, stop = serve(engine)
    yield Served(engine, base_url)
    stop()


@pytest.fixture(scope="session")
def client(real):
    return openai.OpenAI(base_url=real.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="session")
def http(real):
    with httpx.Client(base_url=real.base_url, timeout=30) as c:
        yield c
