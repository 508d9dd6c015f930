"""Operations: doctor with each prerequisite missing in turn, telemetry captured by the SDK's in-memory
exporters, and JSON logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chiron.cli import main
from chiron.core import telemetry as _telemetry
from chiron.engines.doctor import doctor
from chiron.engines.host import InstallOptions, install
from chiron.engines.verify import verify

from conftest import do_build
from helpers import ENV_312, write_spec


def _by_name(checks):  # type: ignore[no-untyped-def]
    return {c.name: c for c in checks}


def _installed(appliance: Path, keys: Path, prefix: Path) -> Path:
    install(InstallOptions(archive=appliance, prefix=prefix, root_file=keys / "1.root.json"))
    return prefix


def test_doctor_all_ready(appliance: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = _installed(appliance, keys, tmp_path / "p")
    checks = _by_name(doctor(appliance, prefix, None))
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert {"python", "archive", "environment", "images", "disk", "installer", "state permissions",
            "state integrity", "clock"} <= set(checks)  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["doctor", str(appliance), "--prefix", str(prefix)])
    assert exc.value.code == 0
    assert capsys.readouterr().out.rstrip().endswith("ready")


def test_doctor_wrong_python_for_the_appliance(tmp_path: Path, keys: Path, index, tool_wheels: Path) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(tmp_path / "s", keys=keys, index_url=index.url, requirements=["gamma==2.0"], environments=ENV_312)
    app = do_build(spec, tmp_path / "cp312.pex", tool_wheels, tmp_path / "cache").output
    check = _by_name(doctor(app, None, None))["environment"]
    assert not check.ok and "no environment fits this host (Python 3.11" in check.detail
    assert "cp312 (Python 3.12" in check.detail and check.fix


def test_doctor_low_disk(appliance: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
    try:
        check = _by_name(doctor(appliance, mnt / "prefix", None))["disk"]
        assert not check.ok and f"{mnt}: 1 MiB free" in check.detail and "choose another --prefix" in check.fix
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_doctor_no_installer_and_no_ssh_keygen(appliance: Path, tmp_path: Path, tool_wheels: Path) -> None:
    """A bare Python (no pip, no uv) with chiron on its path, and a PATH without ssh-keygen."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    site = tmp_path / "site"
    # chiron's dependencies without an installer (uv, pip); chiron itself from this source tree.
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    ours, chosen = set(sys_tags()), {}
    for w in sorted(tool_wheels.glob("*.whl")):  # the tool wheels serve several Pythons: one per project
        name, _v, _b, tags = parse_wheel_filename(w.name)
        if name not in ("uv", "chiron", "pip") and tags & ours:
            chosen.setdefault(name, str(w))
    wheels = list(chosen.values())
    src = Path(__file__).resolve().parents[2] / "src"
    subprocess.run([shutil.which("uv") or str(Path(sys.executable).parent / "uv"), "pip", "install", "--quiet",
                    "--no-index", "--no-deps", "--target", str(site), "--python", str(bare / "bin" / "python"), *wheels],
                   check=True)  # fmt: skip
    code = f"import sys; sys.path[:0] = [{str(src)!r}, {str(site)!r}]; from chiron.cli import main; main()"
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path)}
    proc = subprocess.run([str(bare / "bin" / "python"), "-c", code, "doctor", str(appliance), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert not checks["installer"]["ok"] and "neither uv nor pip" in checks["installer"]["detail"]
    assert not checks["ssh-keygen"]["ok"] and checks["ssh-keygen"]["severity"] == "warning"


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime missing: .ci/run installs it")
def test_doctor_clock_behind_the_floor(appliance: Path, keys: Path, tmp_path: Path) -> None:
    prefix = _installed(appliance, keys, tmp_path / "p")
    proc = subprocess.run(
        ["faketime", "-f", "-10d", sys.executable, "-c", "from chiron.cli import main; main()",
         "doctor", "--prefix", str(prefix), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    clock = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["clock"]
    assert not clock["ok"] and "behind the time floor" in clock["detail"]


def test_doctor_state_permissions_and_integrity(appliance: Path, keys: Path, tmp_path: Path) -> None:
    prefix = _installed(appliance, keys, tmp_path / "p")
    os.chmod(prefix / "state", 0o777)
    checks = _by_name(doctor(None, prefix, None))
    assert not checks["state permissions"].ok and "chmod 700" in checks["state permissions"].fix
    os.chmod(prefix / "state", 0o700)
    (prefix / "state" / "metadata" / "snapshot.json").write_text("{}")
    checks = _by_name(doctor(None, prefix, None))
    assert checks["state permissions"].ok
    assert not checks["state integrity"].ok and "differs from the digest" in checks["state integrity"].detail


def test_spans_and_metrics_with_in_memory_exporters(appliance: Path, keys: Path, tmp_path: Path) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    _telemetry.use_providers(tracer, MeterProvider(metric_readers=[reader]))
    try:
        assert verify(appliance).ok
        _installed(appliance, keys, tmp_path / "p")
        names = {s.name: s for s in spans.get_finished_spans()}
        assert names["chiron.verify"].attributes["ok"] is True
        assert names["chiron.verify"].attributes["bytes_hashed"] > 0
        assert names["chiron.install"].attributes["version"] == "1.0.0"
        data = reader.get_metrics_data()
        metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        assert {"chiron.verify.bytes", "chiron.verify.duration", "chiron.install.duration"} <= set(metrics)
        (point,) = [p for p in metrics["chiron.verify.bytes"].data.data_points if p.attributes.get("ok")]
        assert point.value >= 2 * appliance.stat().st_size * 0.9  # two verifies of (nearly) the whole file
    finally:
        _telemetry.shutdown()


def test_trace_file_gets_spans_and_metrics(appliance: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    with pytest.raises(SystemExit):
        main(["--trace-file", str(trace), "verify", str(appliance)])
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert any(r.get("name") == "chiron.verify" for r in records)
    assert any(r.get("metric") == "chiron.verify.duration" and r["points"][0]["count"] == 1 for r in records)


def test_json_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--log-format", "json", "verify", str(tmp_path / "missing.pex")])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["exit_code"] == 2 and "no such file" in record["message"]
    with pytest.raises(SystemExit) as exc:
        main(["--log-format", "xml", "verify", str(tmp_path / "missing.pex")])
    assert exc.value.code == 2


def test_doctor_on_files_that_are_not_appliances(
    appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing archive or a FIFO is a usage error (exit 2, nothing probed, nothing blocks); a file
    that is not a readable appliance is a failed archive check naming what is wrong, never a traceback."""
    from helpers import rewrite_archive

    fifo = tmp_path / "fifo.pex"
    os.mkfifo(fifo)
    garbage = tmp_path / "garbage.pex"
    garbage.write_bytes(b"#!/usr/bin/env python3\n" + os.urandom(4096))
    listed = rewrite_archive(appliance, tmp_path / "list.pex", replace={"appliance.json": b"[1, 2]"})
    not_json = rewrite_archive(appliance, tmp_path / "nojson.pex", replace={"appliance.json": b"{"})
    cases = [
        # (archive, exit, where the problem is named: stderr (a usage error) or the archive check's detail)
        (tmp_path / "missing.pex", 2, "no such file"),
        (fifo, 2, "not a regular file"),
        (garbage, 3, "not readable as an appliance"),
        (listed, 3, "member appliance.json: is not a JSON object"),
        (not_json, 3, "member appliance.json: is not valid JSON"),
    ]
    for archive, code, says in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["doctor", str(archive), "--json"])
        out, err = capsys.readouterr()
        assert exc.value.code == code, (archive, err)
        assert "Traceback" not in err
        if code == 2:
            assert says in err and str(archive) in err, err
        else:
            check = {c["name"]: c for c in json.loads(out)["checks"]}["archive"]
            assert not check["ok"] and says in check["detail"], check
