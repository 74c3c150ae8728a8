"""bench/ab.py runs one command per environment variant (each in its own process: the kernels' experiment
switches are read at import) and reports their final JSON lines side by side."""

from __future__ import annotations

import json
import sys

import pytest

from bench import ab

# prints one JSON line with the switch it was given (and noise before it, as the benchmarks do)
CMD = [sys.executable, "-c",
       "import json, os; print('# noise'); print(json.dumps({'s': {'v': os.environ.get('AB_X')}}))"]


def test_variants_run_in_their_own_environment(capsys):
    rep = ab.main(["--variant", "base=", "--variant", "x2=AB_X=2,AB_Y=3", "--keys", "s.v", "--", *CMD])
    assert rep["variants"]["base"]["result"] == {"s": {"v": None}} and rep["variants"]["base"]["rc"] == 0
    assert rep["variants"]["x2"]["result"] == {"s": {"v": "2"}} and rep["variants"]["x2"]["env"] == {"AB_X": "2",
                                                                                                  "AB_Y": "3"}
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == '# base rc=0: {"s.v": null}' and lines[1] == '# x2 rc=0: {"s.v": "2"}'
    assert json.loads(lines[-1]) == json.loads(json.dumps(rep))


def test_failures_and_bad_arguments_are_reported():
    rep = ab.main(["--variant", "bad=", "--", sys.executable, "-c", "import sys; sys.exit(3)"])
    assert rep["variants"]["bad"]["rc"] == 3 and rep["variants"]["bad"]["result"] is None
    for argv in (["--variant", "a=", "python"], ["--variant", "a=", "--"], ["--variant", "noequals", "--", "x"],
                 ["--variant", "a=K", "--", "x"], ["--variant", "a=", "--variant", "a=", "--", "x"]):
        with pytest.raises(SystemExit):
            ab.main(argv)
    assert ab.parse_variant("n=A=1=2") == ("n", {"A": "1=2"})  # values may hold '='


def test_rounds_alternate_and_report_medians(tmp_path, capsys, monkeypatch):
    """--prime runs the command once first, outside the comparison (its JSON kept, its --keys printed);
    --rounds 3 runs A B A B A B, each variant keeping every run and the median of each --keys field; `result`
    is the last run's."""
    log = tmp_path / "order.txt"
    cmd = [sys.executable, "-c",
           "import json, os; n = open(os.environ['AB_LOG'], 'a'); n.write(os.environ.get('AB_X', 'p') + '\\n'); "
           "n.close(); k = sum(1 for _ in open(os.environ['AB_LOG'])); print(json.dumps({'k': k}))"]
    monkeypatch.setenv("AB_LOG", str(log))
    rep = ab.main(["--variant", "a=AB_X=a", "--variant", "b=AB_X=b", "--keys", "k", "--rounds", "3", "--prime", "--",
                   *cmd])
    assert log.read_text().split() == ["p", "a", "b", "a", "b", "a", "b"]
    a, b = rep["variants"]["a"], rep["variants"]["b"]
    assert [r["result"]["k"] for r in a["rounds"]] == [2, 4, 6] and [r["result"]["k"] for r in b["rounds"]] == [3, 5, 7]
    assert a["median"] == {"k": 4} and b["median"] == {"k": 5} and a["result"] == {"k": 6}
    assert rep["prime"]["rc"] == 0 and rep["prime"]["result"] == {"k": 1}  # the first process's JSON kept
    out = capsys.readouterr().out
    assert '# prime rc=0' in out and '{"k": 1}' in out.splitlines()[0] and "# b (round 3) rc=0" in out
    with pytest.raises(SystemExit):
        ab.main(["--variant", "a=", "--rounds", "0", "--", "x"])
    assert ab._median([3, None, "x", 1, 2.0, True]) == 2.0 and ab._median([None]) is None
