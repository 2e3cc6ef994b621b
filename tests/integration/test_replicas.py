"""Replicas on one machine, as the scale-out path runs them: two of each model service and two
gateways (on one Milvus server, the state they share), found through address lists with round
robin, health checks and retries on UNAVAILABLE. kill -9 of one replica of each, while clients
search: zero failed searches."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import grpc
import pytest
from amcsearch.launcher import SERVICES, SERVICES_ROOT
from amcsearch.processes import free_port, grpc_serving, service_process, wait_until
from amcsearch.runtime.clients import channel_options, target
from amcsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

from tests.integration.conftest import metric_value, png, scrape
from tests.integration.reliability_report import ROWS

pytestmark = pytest.mark.integration
MODEL_SERVICES = ("query_encoder", "keyword_tagger", "feature_extractor", "attention_rescorer")
PREFIX = {s.module: s.prefix for s in SERVICES}


def start_pair(module: str, env: dict[str, str], log_dir) -> list:
    pair = []
    for replica in range(2):
        process = service_process(
            module, PREFIX[module], free_port(), free_port(), env, log_dir / f"{module}-{replica}", SERVICES_ROOT
        )
        process.name = f"{module}-{replica}"
        process.start()
        pair.append(process)
    for process in pair:
        wait_until(lambda process=process: grpc_serving(process.endpoints["grpc"]), 120, process.name, process)
    return pair


def served_calls(process, method: str) -> float:
    return metric_value(scrape(process.endpoints["metrics"]), "amcsearch_rpc_duration_seconds_count", method=method)


def test_killing_one_replica_of_each_fails_no_search(real_stack, milvus_server, ci_corpus, tmp_path):
    env = {**real_stack.env, "INDEX_URI": milvus_server, "INDEX_COLLECTION": f"replicas_{uuid.uuid4().hex[:8]}"}
    started = []
    try:
        for module in MODEL_SERVICES:
            pair = start_pair(module, env, tmp_path)
            started.extend(pair)
            env[f"{PREFIX[module]}_ADDR"] = ",".join(p.endpoints["grpc"] for p in pair)
        gateways = start_pair("search", env, tmp_path)
        started.extend(gateways)
        gateway_target = target(",".join(g.endpoints["grpc"] for g in gateways))
        with grpc.insecure_channel(gateway_target, options=channel_options()) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            items = [
                search_pb2.ImageItem(
                    id=r.id,
                    image=png(p),
                    keywords=[common_pb2.Keyword(text=k, confidence=c) for k, c in r.noisy_keywords],
                )
                for r, p in zip(ci_corpus.test.images[:40], ci_corpus.test.pixels[:40], strict=True)
            ]
            assert stub.Index(search_pb2.IndexRequest(items=items), timeout=120).indexed_count == 40
            outcomes: Counter = Counter()
            stop = threading.Event()

            def searcher(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        reply = stub.Search(
                            search_pb2.SearchRequest(text=f"red circle {worker} {n}", top_k=5), timeout=10
                        )
                        outcomes["degraded" if reply.degradations else "ok"] += 1
                    except grpc.RpcError as error:
                        outcomes[error.code().name] += 1

            threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
            for thread in threads:
                thread.start()
            time.sleep(4)
            spread = {g.name: served_calls(g, "Search") for g in gateways}
            victims = [p for p in started if p.name.endswith("-0")]
            killed_at = time.monotonic()
            for victim in victims:
                victim.kill()
            time.sleep(8)
            stop.set()
            for thread in threads:
                thread.join(30)
        sent = sum(outcomes.values())
        failed = sent - outcomes["ok"] - outcomes["degraded"]
        ROWS.append(
            {
                "fault": "kill -9 of one replica of each model service and of the gateway (2 of each)",
                "sent": sent,
                "failed": failed,
                "degraded": outcomes["degraded"],
                "lost": 0,
                "codes": ", ".join(f"{k} {v}" for k, v in outcomes.items() if k not in ("ok", "degraded")),
                "recovery": f"no gap: round robin and retries on the surviving replicas ({time.monotonic() - killed_at:.0f} s observed)",
            }
        )
        assert all(spread[f"search-{i}"] > 0 for i in range(2)), f"both gateways took searches: {spread}"
        assert failed == 0, outcomes
        assert outcomes["degraded"] == 0, outcomes
    finally:
        for process in started:
            process.stop()
