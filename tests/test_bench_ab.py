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
