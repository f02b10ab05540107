"""Comparison rows, tables and labels."""

from nncert.verifier.compare import comparison_rows, comparison_table, model_labels


def test_labels_are_unique_short_names():
    assert model_labels(["x/ibp.onnx", "y/sabr.onnx"]) == ["ibp", "sabr"]
    assert model_labels(["runs/ibp/model.onnx", "runs/sabr/model.onnx"]) == ["ibp/model", "sabr/model"]


def test_rows_and_tables():
    summary = {"n": 4, "natural": 3, "certified": 2, "falsified": 1, "unknown": 0, "timeout": 0,
               "misclassified": 1, "mean_time_s": 0.5, "total_time_s": 2.0}
    rows = comparison_rows([{"model": "m", "eps": "0.1", "summary": {"box": summary}}], ["box"])
    assert rows == [{"model": "m", "eps": "0.1", "domain": "box", "n": 4, "natural": 0.75, "certified": 0.5,
                     "falsified": 1, "unknown": 0, "timeout": 0, "mean_time_s": 0.5}]
    markdown = comparison_table(rows, markdown=True).splitlines()
    assert markdown[0].startswith("| model | eps | domain | n | natural | certified |")
    assert markdown[2] == "| m | 0.1 | box | 4 | 75.0% | 50.0% | 1 | 0 | 0 | 0.500 |"
    text = comparison_table(rows).splitlines()
    assert text[0].split() == ["model", "eps", "domain", "n", "natural", "certified", "falsified", "unknown",
                               "timeout", "mean", "s"]


def test_a_failed_run_gets_a_marked_row_per_domain():
    rows = comparison_rows([{"model": "bad", "eps": "0.1", "error": "unsupported op MaxPool"}], ["box", "mnbab"])
    assert [(r["model"], r["domain"], r["error"]) for r in rows] == [("bad", "box", "unsupported op MaxPool"),
                                                                    ("bad", "mnbab", "unsupported op MaxPool")]
    line = comparison_table(rows, markdown=True).splitlines()[2]
    assert line == "| bad | 0.1 | box | - | - | error | - | - | - | - |"
