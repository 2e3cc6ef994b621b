"""The tensor contract has one source: model_repository/README.md's table is generated from it."""

from pathlib import Path

from amcsearch.runtime.contract import contract_table, model_specs

ROOT = Path(__file__).resolve().parents[2]


def test_model_repository_readme_holds_the_generated_contract_table() -> None:
    text = (ROOT / "model_repository" / "README.md").read_text()
    table = text.split("<!-- contract:begin -->\n", 1)[1].split("\n<!-- contract:end -->", 1)[0]
    assert table == contract_table(), "regenerate with: python -m amcsearch.runtime.contract"


def test_outputs_follow_the_libtorch_naming_rule() -> None:
    for spec in model_specs(7).values():
        assert [t.name.rsplit("__", 1)[1] for t in spec.outputs] == [str(i) for i in range(len(spec.outputs))]
