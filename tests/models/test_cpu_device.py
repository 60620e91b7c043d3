"""The CPU in the record and the device setting: /proc/cpuinfo parsing, `auto` precision's choice
from the flags, and device resolution (auto, cpu, cuda[:N]) on this CPU-only machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import load_model
from models import precision as prec
from models.device import DeviceError, resolve_device
from models.precision import choose_precision, cpu_info, native_bf16, parse_cpuinfo

# two processors each, abridged from real machines: the second block must not matter
AMD_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu avx2 avx512f avx512_bf16
"""
INTEL_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512_vnni avx512_bf16 avx_vnni amx_bf16 \
amx_tile amx_int8 avx512_fp16

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16
CPU implementer\t: 0x41
"""


def test_amd_epyc_without_bf16() -> None:
    cpu = parse_cpuinfo(AMD_EPYC)
    assert cpu.model == "AMD EPYC 7B13"  # not x86's numeric "model" line
    assert cpu.flags == ("avx2",)  # avx512f / avx512_bf16 of processor 1 are not read
    assert not cpu.native_bf16
    dtype, why = choose_precision("auto", "cpu", cpu)
    assert dtype == torch.float32
    assert "AMD EPYC 7B13" in why and "neither avx512_bf16 nor amx_bf16" in why


def test_intel_xeon_with_amx_and_avx512_bf16() -> None:
    cpu = parse_cpuinfo(INTEL_XEON)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert cpu.flags == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    assert cpu.native_bf16
    assert cpu.as_dict()["flags"] == list(cpu.flags)
    dtype, why = choose_precision("auto", "cpu", cpu)
    assert dtype == torch.bfloat16
    assert "avx512_bf16 and amx_bf16" in why


def test_a_cpu_with_no_name_and_no_x86_flags_runs_fp32() -> None:
    cpu = parse_cpuinfo(ARM)
    assert cpu.flags == () and cpu.model  # platform's name (or "unknown"), never empty
    assert choose_precision("auto", "cpu", cpu)[0] == torch.float32


def test_a_set_precision_wins_over_the_flags() -> None:
    amd, intel = parse_cpuinfo(AMD_EPYC), parse_cpuinfo(INTEL_XEON)
    assert choose_precision("bf16", "cpu", amd) == (torch.bfloat16, "bf16 as set")
    assert choose_precision("fp32", "cpu", intel) == (torch.float32, "fp32 as set")
    with pytest.raises(prec.ModelLoadError, match="unknown precision"):
        choose_precision("fp8", "cpu", intel)


def test_this_machine_is_read_from_proc_cpuinfo() -> None:
    text = Path("/proc/cpuinfo").read_text()
    cpu = cpu_info()
    assert cpu.source == "/proc/cpuinfo"
    assert cpu == parse_cpuinfo(text)
    # the choice this machine made before the parser: a bf16 flag anywhere in the file
    assert native_bf16() == ("avx512_bf16" in text or "amx_bf16" in text)


def test_without_proc_cpuinfo_the_platform_names_the_cpu(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(prec, "CPUINFO", tmp_path / "missing")
    prec.cpu_info.cache_clear()
    try:
        cpu = cpu_info()
        assert cpu.source == "platform" and cpu.flags == () and cpu.model
        assert choose_precision("auto", "cpu")[0] == torch.float32
    finally:
        prec.cpu_info.cache_clear()


# ---- the device ----------------------------------------------------------------------------

def test_auto_is_the_cpu_without_a_gpu_and_cuda_with_one(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_cuda_is_refused_where_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
            resolve_device(spec)


@pytest.mark.parametrize("spec", ["cuda:x", "cuda:", "gpu", "cuda0", "cuda:-1", ""])
def test_malformed_devices_are_refused(spec: str) -> None:
    with pytest.raises(DeviceError, match="unknown device .* use auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_load_model_resolves_the_device_and_says_why_its_precision() -> None:
    with pytest.raises(DeviceError, match="unknown device"):
        load_model(device="cuda:x")
    m = load_model(device="cpu")
    info = m.info()
    assert info["device"] == "cpu"
    assert info["precision_reason"].startswith("auto: the CPU")
    assert (info["precision"] == "bf16") == native_bf16()
    emb = m.encode_texts(["a red circle"])
    assert emb.dtype.name == "float32" and emb.shape == (1, m.embed_dim)
