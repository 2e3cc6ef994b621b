"""The `amcsearch` command against real gateways: every read sends the read token, --collection
works after the command's name, and the errors it prints are one line in the caller's terms."""

from __future__ import annotations

import uuid

import grpc
import pytest
from amcsearch.cli import main
from amcsearch.v1 import search_pb2, search_pb2_grpc

from tests.integration.conftest import own_gateway, png

pytestmark = pytest.mark.integration
READ, WRITE = "r3ad-token", "wr1te-token"


@pytest.fixture(scope="module")
def guarded(real_stack, tmp_path_factory):
    """A gateway with a read and a write token, on the real stack's model services."""
    work = tmp_path_factory.mktemp("guarded")
    env = {"SEARCH_READ_TOKEN": READ, "SEARCH_AUTH_TOKEN": WRITE, "INDEX_URI": str(work / "index.sqlite")}
    with own_gateway(real_stack, work, "search with tokens", **env) as address:
        yield address


@pytest.fixture
def images(ci_corpus, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for record, pixels in zip(ci_corpus.test.images[:6], ci_corpus.test.pixels[:6], strict=True):
        (folder / f"{record.id}.png").write_bytes(png(pixels))
    return folder


def test_every_read_sends_the_read_token_and_collection_goes_after_the_command(
    guarded, images, ci_corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("SEARCH_READ_TOKEN", raising=False)
    monkeypatch.setenv("SEARCH_AUTH_TOKEN", WRITE)
    name = f"cli_{uuid.uuid4().hex[:8]}"
    addr = ["--addr", guarded]
    assert main([*addr, "collections", "create", name]) == 0
    assert main([*addr, "index", str(images), "--collection", name]) == 0
    first = ci_corpus.test.images[0].id
    queries = tmp_path / "queries.txt"
    queries.write_text("red circle\nblue square\n")
    reads = [
        ["search", "red circle", "--collection", name],
        ["search", "--image", str(images / f"{first}.png"), "--collection", name],
        ["search", "--id", first, "--modify", "make it blue", "--collection", name],
        ["rerank", "red circle", "--ids", first, "--collection", name],
        ["batch", str(queries), "--collection", name],
        ["get", first, "--collection", name],
        ["stats", "--collection", name],
        ["collections"],
    ]
    monkeypatch.delenv("SEARCH_AUTH_TOKEN")
    capsys.readouterr()  # the index command's progress bar
    for argv in reads:
        assert main([*addr, *argv]) == 1, argv  # no token: the gateway refuses
        err = capsys.readouterr().err
        assert err.startswith("error: UNAUTHENTICATED: ") and len(err.strip().splitlines()) == 1, err
    for variable, token in (("SEARCH_READ_TOKEN", READ), ("SEARCH_AUTH_TOKEN", WRITE)):
        monkeypatch.setenv(variable, token)
        for argv in reads:
            assert main([*addr, *argv]) == 0, (variable, argv, capsys.readouterr().err)
        monkeypatch.delenv(variable)
    out = capsys.readouterr().out
    assert f" 1  {first}" in out  # the search by text found the collection's images
    assert "(not in the index)" not in out and name in out


def test_errors_name_the_callers_collection_and_print_float32_as_given(real_stack, capsys):
    missing = f"nosuch_{uuid.uuid4().hex[:6]}"
    assert main(["--addr", real_stack.address("search"), "search", "red", "--collection", missing]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: NOT_FOUND: collection '{missing}' does not exist", err
    with grpc.insecure_channel(real_stack.address("search")) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        calls = [
            lambda: stub.Get(search_pb2.GetRequest(ids=["a"], collection=missing), timeout=30),
            lambda: stub.DropCollection(search_pb2.DropCollectionRequest(name=missing), timeout=30),
            lambda: stub.BatchSearch(
                search_pb2.BatchSearchRequest(searches=[search_pb2.SearchRequest(text="x", collection=missing)]),
                timeout=30,
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            assert f"'{missing}'" in raised.value.details() and "__" not in raised.value.details()
        bias = search_pb2.ModalityBias(min_keyword_weight=0.9, max_keyword_weight=0.5)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Search(search_pb2.SearchRequest(text="red", modality=bias), timeout=30)
        assert "min_keyword_weight 0.9 exceeds max_keyword_weight 0.5" in raised.value.details()
