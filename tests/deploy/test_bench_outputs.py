"""The benchmarks write their generated reports beside the record of runs, never over it:
docs/BENCHMARKS.md holds GPU runs that cannot be measured again at will."""

from __future__ import annotations

from pathlib import Path

from bench import bench_routing, bench_streams, run_all

RECORD = Path(__file__).resolve().parents[2] / "docs" / "BENCHMARKS.md"


def test_no_benchmark_writes_the_record_of_runs() -> None:
    for target in (run_all.DEFAULT_OUT, bench_streams.DOC, bench_routing.DOC):
        assert target.resolve() != RECORD.resolve(), target
        assert target.name == "BENCHMARKS.latest.md"


def test_a_section_is_written_into_the_given_file_and_replaces_only_itself(tmp_path: Path) -> None:
    doc = tmp_path / "latest.md"
    doc.write_text("# Report\n\n## A\n\nold a\n\n## B\n\nkept\n")
    bench_streams.write_section("## A\n\nnew a\n", doc, "A")
    assert doc.read_text() == "# Report\n\n## A\n\nnew a\n\n## B\n\nkept\n"
    bench_streams.write_section("## C\n\nc\n", doc, "C")  # absent: appended
    assert doc.read_text().endswith("## B\n\nkept\n\n## C\n\nc\n")
