"""Unit tests of ota.edge.profile (ISA flags, labels) and ota.edge.identity (device key, enrolment)."""

from __future__ import annotations

import json
import stat
from dataclasses import replace

import pytest

from ota.edge.errors import IdentityError
from ota.edge.identity import DeviceIdentity, Enrolment
from ota.edge.profile import detect_profile, normalise_arch, parse_cpu_flags, profile_name

X86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni ht\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp cpuid\nCPU implementer\t: 0x41\n"


def test_x86_flags_and_label():
    flags = parse_cpu_flags(X86)
    assert {"avx2", "avx512f", "avx512_vnni"} <= set(flags)
    assert "ht" not in flags
    assert profile_name("x86_64", flags) == "x86_64-avx512_vnni"
    assert profile_name("x86_64", ("avx2",)) == "x86_64-avx2"


def test_arm_features_imply_neon_and_dotprod():
    flags = parse_cpu_flags(ARM)
    assert {"asimd", "neon", "asimddp"} <= set(flags)
    assert profile_name("aarch64", flags) == "aarch64-dotprod"
    assert profile_name("aarch64", ("neon",)) == "aarch64-neon"


def test_arch_aliases():
    assert normalise_arch("AMD64") == "x86_64"
    assert normalise_arch("arm64") == "aarch64"


def test_detect_profile_from_files(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ARM)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2048 kB\n")
    profile = detect_profile(cpuinfo_path=cpuinfo, meminfo_path=meminfo, machine="arm64")
    assert profile.name == "aarch64-dotprod"
    assert profile.memory_bytes == 2048 * 1024
    assert "CPUExecutionProvider" in profile.ort_providers
    assert profile.ort_version
    assert detect_profile(override_name="cam-v2", cpuinfo_path=cpuinfo).name == "cam-v2"
    details = profile.to_details()
    assert all(isinstance(v, str | int) for v in details.values())


def test_device_key_is_created_once_with_0600(tmp_path):
    identity = DeviceIdentity(tmp_path)
    first = identity.public_key_dict()
    mode = stat.S_IMODE(identity.key_path.stat().st_mode)
    assert mode == 0o600
    assert DeviceIdentity(tmp_path).public_key_dict() == first  # reloaded, not regenerated
    assert identity.default_device_id().startswith("dev-")


def test_world_readable_key_is_refused(tmp_path):
    identity = DeviceIdentity(tmp_path)
    identity.load_or_create_key()
    identity.key_path.chmod(0o644)
    with pytest.raises(IdentityError, match="0600"):
        DeviceIdentity(tmp_path).load_or_create_key()


def test_corrupt_key_is_a_typed_error(tmp_path):
    identity = DeviceIdentity(tmp_path)
    identity.directory.mkdir(parents=True)
    identity.key_path.write_bytes(b"not a key")
    identity.key_path.chmod(0o600)
    with pytest.raises(IdentityError):
        identity.load_or_create_key()


def test_trusted_root_is_stored_once(tmp_path):
    identity = DeviceIdentity(tmp_path)
    director = DeviceIdentity(tmp_path / "other").public_key_dict()
    enrolment = Enrolment("dev-1", "http://s/tuf/metadata/", "http://s/tuf/targets/", director, "accepted")
    identity.store_enrolment(enrolment, {"signed": {"version": 1}})
    identity.store_enrolment(enrolment, {"signed": {"version": 666}})  # a re-enrolment cannot swap the anchor
    assert b'"version": 1' in identity.trusted_root_path.read_bytes()
    assert identity.load_enrolment() == enrolment


def test_malformed_enrolment_file_is_a_typed_error(tmp_path):
    identity = DeviceIdentity(tmp_path)
    identity.directory.mkdir(parents=True)
    identity.device_path.write_text('{"device_id": "x"}')
    with pytest.raises(IdentityError):
        identity.load_enrolment()


def _enrol(state_dir, device_id: str, profile: str) -> None:
    identity = DeviceIdentity(state_dir)
    identity.load_or_create_key()
    director = DeviceIdentity(state_dir / "other").public_key_dict()
    enrolment = Enrolment("x", "http://s/tuf/metadata/", "http://s/tuf/targets/", director, "accepted")
    identity.store_enrolment(replace(enrolment, device_id=device_id, hardware_profile=profile), {})


def test_agent_status_shows_the_enrolled_identity_not_the_defaults(tmp_path):
    """`agent run --device-id cam-7 --profile cam-v2` enrolled; `agent status` says the same (issue 15)."""
    from typer.testing import CliRunner

    from ota.edge.cli import agent_app

    _enrol(tmp_path, "cam-7", "cam-v2")
    result = CliRunner().invoke(agent_app, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["device_id"], status["profile"], status["admission"]) == ("cam-7", "cam-v2", "accepted")


def test_a_restart_without_flags_polls_as_the_enrolled_device_and_flags_still_win(tmp_path):
    from ota.edge.agent import Agent

    _enrol(tmp_path, "cam-7", "cam-v2")
    restarted = Agent(server_url="http://unused.invalid", state_dir=tmp_path)
    assert (restarted.device_id, restarted.hardware.name, restarted.api.device_id) == (
        "cam-7",
        "cam-v2",
        "cam-7",
    )
    explicit = Agent(server_url="http://unused.invalid", state_dir=tmp_path, device_id="d", profile="p")
    assert (explicit.device_id, explicit.hardware.name) == ("d", "p")


def test_an_enrolment_stored_before_profiles_were_kept_still_loads(tmp_path):
    _enrol(tmp_path, "cam-7", "cam-v2")
    identity = DeviceIdentity(tmp_path)
    raw = json.loads(identity.device_path.read_text())
    del raw["hardware_profile"]
    identity.device_path.write_text(json.dumps(raw))
    assert identity.load_enrolment().hardware_profile == ""
