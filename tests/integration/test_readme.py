"""Every example of README.md, run as written against a real stack, read from README.md itself:
an edited example is a tested example.

- ```python blocks run in README order in one namespace (the later snippets use the `search`
  stub of the first, as the README says), with 127.0.0.1:50050 replaced by the test gateway's
  address. A snippet's printed output must not hold an empty result list (`[]`) or a
  "not indexed" line.
- ```sh blocks: each command (backslash continuations and quoted newlines joined) runs in bash
  as written, in a folder laid out as the README says (img-1.png, ..., snapshot.jpg,
  var/demo-images-demo-0, var/demo-catalogue-demo/shop, model_repository/keyword_tagger, a copy
  of protos/), with $SEARCH_ADDR set to the test gateway and the venv's bin first on PATH
  (`amcsearch` is the installed entry point, importing this checkout's code). `make` lines are
  the only ones not run: they build and start the stack that this test already runs. A CLI
  search must print at least one result.
- grpcurl: Debian has no grpcurl package and PyPI only an unofficial wrapper carrying a prebuilt
  binary, which the project does not take as a dependency. With a `grpcurl` binary on PATH the
  line runs as written; without one it is translated into the same call: the method and its
  request type from the generated descriptors (no reflection), the -d JSON through
  json_format.Parse (grpcurl's protojson reads the same JSON), -H headers as gRPC metadata, and
  `list` through the server's reflection service. Either way a Search, Rerank or BatchSearch
  example must find something.
- ```text blocks are not commands (the Go, Node and Java stub generators are not installed here).

The gateway is a second SearchService process on the real stack's model services, with its own
empty index, so the examples see what they themselves indexed and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from amcsearch.launcher import ROOT, SERVICES_ROOT
from amcsearch.v1 import search_pb2  # noqa: F401  (registers the SearchService descriptors)
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from models.corpus.street_shop import load_or_build_street_shop
from tests.integration.conftest import own_gateway, png

pytestmark = pytest.mark.integration
README = ROOT / "README.md"
README_ADDRESS = "127.0.0.1:50050"
FOUND_SOMETHING = {"Search", "Rerank", "BatchSearch"}
DEMO_IMAGES = 40
CATALOGUE_PRODUCTS = 40


@dataclass(frozen=True)
class Example:
    kind: str  # "python" or "sh"
    line: int  # where it starts in README.md
    text: str

    @property
    def name(self) -> str:
        """L<line>-python, L<line>-grpcurl-<method>, L<line>-amcsearch-<command>, L<line>-<program>."""
        if self.kind == "python":
            return f"L{self.line}-python"
        words = [w for w in self.text.split() if "=" not in w]
        if words[0] == "grpcurl":
            return f"L{self.line}-grpcurl-{words[-1].rsplit('/', 1)[-1]}"
        return f"L{self.line}-{'-'.join(words[:2])}"


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line of the first content line, lines) of every ``` block."""
    blocks, language, start, lines = [], None, 0, list[str]()
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.fullmatch(r"```(\w*)\s*", line)
        if fence and language is None:
            language, start, lines = fence.group(1), number + 1, []
        elif line.strip() == "```" and language is not None:
            blocks.append((language, start, lines))
            language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "README.md has an unclosed ``` block"
    return blocks


def shell_commands(start: int, lines: list[str]) -> list[Example]:
    """One Example per command: lines ending in a backslash, or inside an open quote, go on."""
    commands, pending, first = [], "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        try:
            shlex.split(pending.replace("\\\n", " "))
        except ValueError:  # an open quote: the JSON of -d goes on on the next line
            continue
        if pending.strip():
            commands.append(Example("sh", first, pending.strip()))
        pending = ""
    assert not pending.strip(), f"README.md line {first}: unfinished command {pending!r}"
    return commands


def readme_examples() -> list[Example]:
    examples = []
    for language, start, lines in fenced_blocks(README.read_text()):
        if language == "python":
            examples.append(Example("python", start, "\n".join(lines)))
        elif language in ("sh", "bash", "console"):
            examples.extend(shell_commands(start, lines))
    return examples


EXAMPLES = readme_examples()


def test_every_command_of_the_readme_is_in_a_block_this_test_runs():
    """A grpcurl or amcsearch line outside ```sh blocks (indented, or in a ```text block) would
    escape this test: there is none, and there are examples of each kind."""
    tested = {(e.line, e.kind) for e in EXAMPLES}
    inside = set()
    for language, start, lines in fenced_blocks(README.read_text()):
        if language in ("sh", "bash", "console", "python"):
            inside.update(range(start, start + len(lines)))
    stray = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(README.read_text().splitlines(), 1)
        if re.match(r"\s*(\$ )?(grpcurl|amcsearch|\.venv/bin/amcsearch)\s", line) and number not in inside
    ]
    assert not stray, stray
    commands = [e.text.split()[0] for e in EXAMPLES if e.kind == "sh"]
    assert {"grpcurl", "amcsearch"} <= set(commands) and any(k == "python" for _, k in tested)


@pytest.fixture(scope="module")
def gateway(real_stack, tmp_path_factory):
    """A SearchService of its own (empty index, no tokens) on the real stack's model services."""
    work = tmp_path_factory.mktemp("readme-gateway")
    with own_gateway(real_stack, work, "README gateway", INDEX_URI=str(work / "index.sqlite")) as address:
        yield address


def save_png(pixels, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def workdir(ci_corpus, model_repository, tmp_path_factory) -> Path:
    """The folder the README's examples run in, as its "Calling it" section describes it."""
    work = tmp_path_factory.mktemp("readme-work")
    test = ci_corpus.test
    for name, row in (("img-1.png", 0), ("img-2.png", 1), ("img-3.png", 2), ("mine.png", 3)):
        (work / name).write_bytes(png(test.pixels[row]))
    demo = work / "var" / "demo-images-demo-0"
    with_metadata = []
    for record, pixels in zip(test.images[:DEMO_IMAGES], test.pixels[:DEMO_IMAGES], strict=True):
        save_png(pixels, demo / f"{record.id}.png")
        with_metadata.append({"id": record.id, "title": record.caption, "keywords": record.noisy_keywords})
    (demo / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in with_metadata))
    shop = load_or_build_street_shop("ci", 0).test
    catalogue = work / "var" / "demo-catalogue-demo" / "shop"
    entries = []
    for row, product in enumerate(shop.products[:CATALOGUE_PRODUCTS]):
        save_png(shop.shop_pixels[row], catalogue / f"{product.id}.png")
        entries.append({"id": product.id, "title": " ".join(product.tags), "tags": product.tags})
    (catalogue / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    shot = int(next(i for i, p in enumerate(shop.street_product) if p == 0))
    Image.fromarray(shop.street_pixels[shot]).save(work / "snapshot.jpg", format="JPEG", quality=90)
    keywords = work / "model_repository" / "keyword_tagger"
    keywords.mkdir(parents=True)
    shutil.copyfile(model_repository / "keyword_tagger" / "keywords.txt", keywords / "keywords.txt")
    shutil.copytree(ROOT / "protos", work / "protos")
    return work


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    """The Python snippets' module: shared globals, as in one interpreter session, and a real
    module with a file per snippet, so that TorchScript can read a snippet's class source."""
    module = types.ModuleType("readme_examples")
    module.__dict__["snippets"] = tmp_path_factory.mktemp("readme-snippets")
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def shell_env(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEARCH_READ_TOKEN", "SEARCH_AUTH_TOKEN")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(SERVICES_ROOT), str(ROOT)])
    env["SEARCH_ADDR"] = address
    return env


def translated_grpcurl(argv: list[str]) -> dict:
    """The call a grpcurl command line makes, made with grpcio; its reply as JSON-like dict."""
    headers, data, positional = [], "{}", []
    args = iter(argv[1:])
    for arg in args:
        if arg == "-plaintext":
            continue
        if arg == "-H":
            key, _, value = next(args).partition(":")
            headers.append((key.strip().lower(), value.strip()))
        elif arg == "-d":
            data = next(args)
        elif arg.startswith("-"):
            raise AssertionError(f"grpcurl option {arg} is not translated: teach translated_grpcurl it")
        else:
            positional.append(arg)
    address, *call = positional
    with grpc.insecure_channel(address) as channel:
        if call == ["list"]:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=30, metadata=headers)
            return {"services": [s.name for s in answer.list_services_response.service]}
        assert len(call) == 1, f"grpcurl call not translated: {call}"
        service_name, method_name = call[0].rsplit("/", 1)
        method = descriptor_pool.Default().FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(data, request_class())
        rpc = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        return json_format.MessageToDict(rpc(request, timeout=120, metadata=headers))


def run_grpcurl(command: str, env: dict[str, str], cwd: Path) -> dict:
    if shutil.which("grpcurl", path=env["PATH"]):
        done = subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        if command.split()[-1] == "list":
            return {"services": done.stdout.split()}
        return json.loads(done.stdout or "{}")
    return translated_grpcurl(shlex.split(command.replace("\\\n", " ")))


def check_found_something(command: str, reply: dict) -> None:
    method = command.split("/")[-1].split()[0] if "/" in command else ""
    if method in ("Search", "Rerank"):
        assert reply.get("results"), f"no results: {command}"
    elif method == "BatchSearch":
        assert reply.get("responses") and all(r.get("results") for r in reply["responses"]), reply


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_readme_example(example, gateway, workdir, namespace, monkeypatch):
    text = example.text.replace(README_ADDRESS, gateway)
    if example.kind == "python":
        monkeypatch.chdir(workdir)
        source = namespace.snippets / f"README_line_{example.line}.py"
        source.write_text(text)
        namespace.__file__ = str(source)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(text, str(source), "exec"), namespace.__dict__)  # noqa: S102
        output = printed.getvalue()
        assert "[]" not in output.split() and "not indexed" not in output, output
        return
    words = shlex.split(text.replace("\\\n", " "), comments=True)
    if words[0] == "make":
        # Running it would start a stack inside this one (the suite is what `make test` runs):
        # check instead that make knows the target and its arguments, without running it.
        dry = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0, f"{text!r}: {dry.stderr[-500:]}"
        return
    env = shell_env(gateway)
    program = next(w for w in words if "=" not in w)
    if program == "grpcurl":
        reply = run_grpcurl(text, env, workdir)
        if words[-1] == "list":
            assert "amcsearch.v1.SearchService" in reply["services"], reply
        check_found_something(text, reply)
        return
    done = subprocess.run(["bash", "-c", text], env=env, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    if program == "amcsearch" and words[words.index("amcsearch") + 1] in ("search", "rerank"):
        assert "(no results)" not in done.stdout and re.search(r"^ 1  \S", done.stdout, re.M), done.stdout
