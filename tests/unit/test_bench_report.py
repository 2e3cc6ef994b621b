"""The bench's concurrency-16 section: texts per forward and the in-process reference at that batch."""

from benchmarks.floor import Floor
from benchmarks.run import (
    SizeFigures,
    concurrency_section,
    machine_ticks,
    served_text_batch,
    triton_compute,
    triton_forwards,
)


def figures() -> SizeFigures:
    f = SizeFigures(1000)
    f.floor = Floor(
        0.009, 0.002, 0.0001, 200.0, 16, 100, 1000, one_thread={"text_encoder": 0.010}, text_per_text={5: 0.006}
    )
    f.busy, f.client_cpu = 0.75, 0.0005
    f.forwards = {
        "text_encoder": {"requests": 20, "forwards": 20, "rows": 94, "compute": 0.94, "queue": 0.1},
        "amc_rescorer": {"requests": 20, "forwards": 20, "rows": 9400, "compute": 0.47, "queue": 0.0},
    }
    return f


def test_the_served_batch_is_rows_over_forwards_rounded():
    assert served_text_batch(figures()) == 5
    assert served_text_batch(SizeFigures(1000)) == 1  # nothing counted: batch 1


def test_the_section_compares_tritons_compute_per_text_with_the_same_batch_in_process():
    row = concurrency_section([figures()])[-1].split(" | ")
    assert row[0] == "| 1,000" and row[1] == "75%"
    assert row[4] == "4.7"  # texts per forward
    assert row[5] == "10.0 ms" and row[6] == "6.0 ms" and row[7] == "1.67x"  # 0.94 s / 94 texts vs batch 5
    assert row[8] == "10.0 ms"  # batch 1 in-process: the floor's one-thread forward
    assert row[9] == "50 us |"  # 0.47 s over 9,400 candidates


def test_machine_ticks_are_idle_within_all():
    idle, every = machine_ticks()
    assert 0 <= idle <= every


def test_tritons_compute_per_request_comes_from_the_same_counters():
    before = ""
    after = "\n".join(
        f'{name}{{model="text_encoder",version="1"}} {value}'
        for name, value in (
            ("nv_inference_request_success", 4),
            ("nv_inference_exec_count", 4),
            ("nv_inference_count", 10),
            ("nv_inference_compute_infer_duration_us", 40000),
            ("nv_inference_queue_duration_us", 2000),
        )
    )
    assert triton_forwards(before, after)["text_encoder"]["rows"] == 10
    assert triton_compute(before, after) == {"text_encoder": 0.01, "text_encoder queue": 0.0005}
