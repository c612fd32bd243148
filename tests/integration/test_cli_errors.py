"""The `callbox` command run as a user runs it, with bad input: one line that says what is
wrong, exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CALLBOX = str(Path(sys.executable).parent / "callbox")


def run_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    done = subprocess.run([CALLBOX, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["call", "sip:x@127.0.0.1:"], "callbox call: bad SIP URI 'sip:x@127.0.0.1:' (bad port ''"),
    (["call", "sip:x@127.0.0.1:99999"], "bad port '99999'"),
    (["call", "sip:x@127.0.0.1:0"], "bad port 0 in 'sip:x@127.0.0.1:0': it must be 1-65535"),
    (["call", "notauri"], "bad SIP URI 'notauri'"),
    (["call", "tel:+15550001111"], "cannot call 'tel:+15550001111'"),
    (["call", "sip:x@no-such-host.invalid:5060"], "cannot resolve 'no-such-host.invalid'"),
    (["call", "sip:x@127.0.0.1:5060", "--local-host", "300.1.1.1"],
     "--local-host must be an IP address of this machine, got '300.1.1.1'"),
    (["call", "sip:x@127.0.0.1:5060", "--hangup-after", "soon"],
     "argument --hangup-after: invalid float value: 'soon'"),
    (["call", "sip:x@127.0.0.1:5060", "--hangup-after", "-1"], "--hangup-after must be"),
    (["call", "sip:x@127.0.0.1:5060", "--dtmf", "x@y"], "--dtmf items are DIGITS@SECONDS"),
    (["call", "sip:x@127.0.0.1:5060", "--record-heard", "no/such/dir/heard.wav"],
     "--record-heard: no such directory: no/such/dir"),
    (["serve", "--config", "missing.toml"], "callbox serve: configuration error: config file "
     "not found: missing.toml"),
    (["serve", "--sip-listen", "127.0.0.1:abc"], "sip.listen must be HOST:PORT"),
    (["serve", "--rtp-ports", "9-2"], "sip.rtp_ports must satisfy"),
    (["serve", "--loop", "trio"], "argument --loop: invalid choice: 'trio'"),
    (["dial", "sip:x@127.0.0.1"], "callbox: argument COMMAND: invalid choice: 'dial' (choose "
     "from 'serve', 'call', 'demo', 'swaig')"),
    ([], "callbox: the following arguments are required: COMMAND (see 'callbox --help')"),
    (["swaig"], "callbox swaig: the following arguments are required: ACTION"),
    (["swaig", "invoke", "--call", "c", "--function", "f", "--project", "p", "--token", "t",
      "--url", "http://127.0.0.1:9", "--args", "[1]"], "--args must be a JSON object"),
])
def test_a_bad_input_is_one_line_and_exit_status_2(tmp_path: Path, args: list[str],
                                                   says: str) -> None:
    code, out, err = run_cli(*args, cwd=tmp_path)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert says in err, err


@pytest.mark.parametrize(("setting", "says"), [
    ('[sip]\nmax_calls = "many"\n', "sip.max_calls must be an integer, got 'many'"),
    ("[sip\n", "is not valid TOML"),
    ('[http]\nlisten = "127.0.0.1:99999"\n', "http.listen"),
    ('[sip]\nrtp_ports = "20000"\n', "sip.rtp_ports"),
])
def test_a_bad_config_value_is_one_line_and_exit_status_2(tmp_path: Path, setting: str,
                                                           says: str) -> None:
    config = tmp_path / "callbox.toml"
    config.write_text(setting)
    code, out, err = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("callbox serve: configuration error:") and says in err, err


def test_a_data_dir_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run_cli("demo", "--data-dir", str(blocker / "data"), cwd=tmp_path)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("callbox demo: ") and str(blocker) in err, err
