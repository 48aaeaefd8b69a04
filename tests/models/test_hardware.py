"""models/hardware.py: what the CPU computes natively, and the shapes bf16 batches are padded to."""

from __future__ import annotations

from tunesmith.models.hardware import BF16_PAD_MULTIPLE, bf16_pad_multiple


def test_bf16_batches_are_padded_to_the_multiple_only_within_the_models_positions() -> None:
    assert bf16_pad_multiple(256, 512) == BF16_PAD_MULTIPLE
    assert bf16_pad_multiple(100, 512) == BF16_PAD_MULTIPLE  # 104 tokens still fit
    assert bf16_pad_multiple(77, 77) is None  # a context of 77 (CLIP's) has no 78th to 80th position
    assert bf16_pad_multiple(256, None) == BF16_PAD_MULTIPLE
    assert bf16_pad_multiple(100, None) is None  # an unknown context: never past max_length


def _cores_with(monkeypatch, root, cgroup_line: str = "0::/\n") -> int:
    from tunesmith.models import hardware

    proc = root / "proc-self-cgroup"
    proc.write_text(cgroup_line)
    monkeypatch.setattr(hardware, "CGROUP_ROOT", root)
    monkeypatch.setattr(hardware, "PROC_CGROUP", proc)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    return hardware.cpu_cores.__wrapped__()  # past @cache: each fake machine is asked afresh


def test_cpu_cores_is_bounded_by_the_cgroup_quota_a_container_gets(tmp_path, monkeypatch) -> None:
    """`docker --cpus 2` on an 8-core host: the affinity lists all 8, and 8 threads fought over 2 cores' time."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 cores: rounded up
    assert _cores_with(monkeypatch, v2) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _cores_with(monkeypatch, v2) == 8  # no quota: the affinity
    (v2 / "cpu.max").write_text("3200000 100000\n")
    assert _cores_with(monkeypatch, v2) == 8  # a quota above the affinity: the affinity
    (v2 / "svc.slice").mkdir()
    (v2 / "svc.slice" / "cpu.max").write_text("5000 100000\n")  # the process's own cgroup (no namespace); 0.05 cores
    assert _cores_with(monkeypatch, v2, "0::/svc.slice\n") == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cores_with(monkeypatch, v1, "4:cpu,cpuacct:/\n") == 3
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cores_with(monkeypatch, v1, "4:cpu,cpuacct:/\n") == 8
    (tmp_path / "none").mkdir()
    assert _cores_with(monkeypatch, tmp_path / "none") == 8  # no cgroup files (not Linux, or none mounted)


def test_bf16_is_native_only_on_gpus_that_compute_it_not_emulate_it(monkeypatch) -> None:
    """torch.cuda.is_bf16_supported() counts emulation: a T4 (sm_75) or V100 said native bf16, and trained slower."""
    import types

    import torch.cuda as tc

    from tunesmith.models.hardware import native_bf16

    monkeypatch.setattr(tc, "is_available", lambda: True)
    monkeypatch.setattr(tc, "current_device", lambda: 0)
    monkeypatch.setattr(tc, "_check_bf16_tensor_supported", lambda device: True, raising=False)  # a T4 makes bf16 tensors
    for (major, minor), native in (((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(tc, "get_device_properties", lambda device, m=(major, minor): types.SimpleNamespace(
            major=m[0], minor=m[1]))
        assert native_bf16() is native, (major, minor)
